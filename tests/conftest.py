pytest_plugins = ["tests.contract.conftest_ports", "tests.contract.conftest_search"]
