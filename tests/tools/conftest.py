from support.triton_config import triton_config  # noqa: F401  (the fixture, registered for these tests)
