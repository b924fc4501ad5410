# the service tests' tiny run and X-ray, shared with the serve command's tests
from tests.serving.conftest import png_file, tiny_run  # noqa: F401
