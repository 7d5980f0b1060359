#!/usr/bin/env python3
"""Drops every file under a directory from the page cache (fsync, then
posix_fadvise DONTNEED), as a reboot, a page cache budget or memory pressure would.
Pages a running process has mapped stay: stop the server first.

usage: drop_page_cache.py DIR"""
import os
import sys

for root, _, files in os.walk(sys.argv[1]):
    for f in files:
        fd = os.open(os.path.join(root, f), os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
