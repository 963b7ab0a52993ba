"""What gputext prints for a person: text from outside with its control characters made visible.

Process, pod and container names, paths, device IDs and option values are chosen by whoever made them. A
process named with an ESC would put an escape sequence on the terminal of the admin who runs `gputext
show`; a path with a newline would make one error two lines in the journal. So everything gputext prints
goes through visible(): every message on stderr (complain), each line of `show` and `doctor`.
"""

from __future__ import annotations

import sys


def visible(text: str) -> str:
    """`text` with each character that Python does not count as printable written as its escape, as repr()
    writes it (ESC as \\x1b, a newline as \\n): control characters (C0, DEL, C1, whose CSI starts an escape
    sequence on some terminals), the Unicode line separators, the bidirectional overrides that reorder
    what is shown, lone surrogates (undecodable bytes), spaces other than the space."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


MOST_CHARACTERS = 1000  # of a message: past it, its middle (what it quotes from outside) is cut


def complain(message: str) -> None:
    """One line on stderr, `gputext: message`, whatever the message quotes: its control characters made
    visible, and where something it quotes makes it longer than a person reads (a path or a value of
    thousands of characters), its middle cut, keeping the start (what is wrong) and the end (the fix)."""
    line = visible(message)
    if len(line) > MOST_CHARACTERS:
        line = f"{line[:MOST_CHARACTERS * 2 // 3]}...({len(line)} characters)...{line[-MOST_CHARACTERS // 4:]}"
    print(f"gputext: {line}", file=sys.stderr)
