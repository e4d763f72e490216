"""The two files of secrets a server reads, bearer tokens (`client-id token`) and the metrics'
basic-auth users (`user password`): one pair per line, blank lines and `#` comments allowed. Read
in one place so both say the same things about a bad file, and neither echoes a secret."""

from __future__ import annotations

from pathlib import Path

from protos.errors import SplitInferError


def read_pairs(path: str | Path, what: str, fields: str, error: type[SplitInferError]) -> list[tuple[int, str, str]]:
    """(line number, first, second) of each line of `path`, a `what` file of `fields` lines;
    `error` (naming the file, and the line, never its content) for one that cannot be read or
    has a line of another shape."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{what} {str(path)!r}: cannot read it: {getattr(err, 'strerror', None) or err}") from err
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        values = line.split("#", 1)[0].split()
        if not values:
            continue
        if len(values) != 2:
            # The line may hold a secret: say where it is and what is wrong, not what it says.
            raise error(f"{what} {str(path)!r} line {number}: expected '{fields}', found {len(values)} field(s)")
        pairs.append((number, values[0], values[1]))
    return pairs
