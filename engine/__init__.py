"""Slotwise's pure scheduling core: no I/O, no clock, no globals.

Every instant is an aware UTC ``datetime``; every local-time concept carries an IANA zone
name. Callers pass ``now`` explicitly wherever a rule depends on it.
"""
