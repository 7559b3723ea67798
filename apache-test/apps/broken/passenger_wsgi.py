"""An app that fails while loading."""
import module_that_does_not_exist  # noqa: F401
