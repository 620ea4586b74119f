"""Hidden tests of python-fizzbuzz: run from the learner's directory, which is on PYTHONPATH."""
import os
import subprocess
import sys
import unittest

import fizzbuzz


class FizzBuzzTest(unittest.TestCase):
    def test_plain_numbers(self):
        for n in (1, 2, 4, 7, 98):
            self.assertEqual(fizzbuzz.fizzbuzz(n), str(n))

    def test_multiples_of_three(self):
        for n in (3, 6, 9, 99):
            self.assertEqual(fizzbuzz.fizzbuzz(n), "Fizz")

    def test_multiples_of_five(self):
        for n in (5, 10, 20, 100):
            self.assertEqual(fizzbuzz.fizzbuzz(n), "Buzz")

    def test_multiples_of_fifteen(self):
        for n in (15, 30, 45, 90):
            self.assertEqual(fizzbuzz.fizzbuzz(n), "FizzBuzz")

    def test_script_prints_one_to_hundred(self):
        script = os.path.abspath(fizzbuzz.__file__)
        out = subprocess.run([sys.executable, script], capture_output=True, text=True,
                             timeout=10, check=True).stdout.splitlines()
        self.assertEqual(len(out), 100)
        self.assertEqual(out[:5], ["1", "2", "Fizz", "4", "Buzz"])
        self.assertEqual(out[14], "FizzBuzz")


if __name__ == "__main__":
    unittest.main()
