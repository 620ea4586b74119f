def fizzbuzz(n):
    """Return "Fizz", "Buzz", "FizzBuzz" or str(n) for a positive integer n."""
    if n % 15 == 0:
        return "FizzBuzz"
    if n % 3 == 0:
        return "Fizz"
    if n % 5 == 0:
        return "Buzz"
    return str(n)


if __name__ == "__main__":
    for i in range(1, 101):
        print(fizzbuzz(i))
