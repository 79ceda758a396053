"""Real servers started from user space for integration tests and ``make run``.

Nothing here is imported by the driver: testbed code lives with the tests.
"""
