def fizzbuzz(n):
    """Return "Fizz", "Buzz", "FizzBuzz" or str(n) for a positive integer n."""
    # Write your code here.
    raise NotImplementedError("fizzbuzz is not written yet")


if __name__ == "__main__":
    for i in range(1, 101):
        print(fizzbuzz(i))
