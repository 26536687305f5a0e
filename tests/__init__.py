"""The test suite, by marker: unit, integration, browser, gpu, slow."""
