import os

from hypothesis import settings

pytest_plugins = ["tests.contract.conftest_ports", "tests.contract.conftest_search"]

# CI derandomizes property tests so a landing never depends on chance; local
# runs keep exploring new examples.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
