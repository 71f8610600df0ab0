"""The material's findings as runnable experiments (``ncsn compare``, ...)."""
