"""Notices: telling the people on call what the responder did (Teams cards, e-mail) and
commenting on the alert that caused it. Not to be confused with Graph change notifications
(shared/watch), which the responder receives."""
