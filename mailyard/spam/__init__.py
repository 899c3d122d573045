"""Spam filtering: the stage the delivery worker runs on each recipient's copy.

A score is rule points (rules.py: sender authentication, header anomalies,
GTUBE, the sender blocklist of blocklist.py) plus the points of a learned
classifier (classifier.py: hashed features from features.py, online logistic
regression with global and per-user weights in the MetadataStore). The
mailbox service trains it through the SpamFeedback protocol it is handed
(store/spam_feedback.py) when a user moves mail into or out of SPAM.

May import policy, proto and the store ports; delivery/ imports it.
"""
