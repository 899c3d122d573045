"""Every reply we send carries an enhanced status code (RFC 2034)."""
import pytest

from mailyard.mta.smtp import with_enhanced_code


@pytest.mark.parametrize("stock, enhanced", [
    ("250 OK", "250 2.0.0 OK"),
    ("552 Error: Too much mail data", "552 5.3.4 Message size exceeds fixed maximum message size"),
    ("503 Error: need RCPT command", "503 5.5.1 Need RCPT command"),
    ("501 Syntax: MAIL FROM: <address>", "501 5.5.4 Syntax: MAIL FROM: <address>"),
    ('500 Error: command "FOO" not recognized', '500 5.5.2 command "FOO" not recognized'),
    ("550 5.1.1 No such user here", "550 5.1.1 No such user here"),
])
def test_stock_replies_gain_an_enhanced_code(stock, enhanced):
    assert with_enhanced_code(stock) == enhanced


@pytest.mark.parametrize("reply", ["220 mx.example.test mailyard ESMTP", "250 mx.example.test",
                                   "250-SIZE 1000\r\n250 HELP", "354 End data with <CR><LF>.<CR><LF>"])
def test_greeting_helo_and_multiline_replies_are_left_alone(reply):
    assert with_enhanced_code(reply) == reply
