pytest_plugins = ["tests.contract.conftest_ports"]
