from tests.fuzz.budget import FIGURES


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("fuzzing")
        for line in FIGURES:
            terminalreporter.write_line(line)
