"""A pickle payload that would run a shell command when unpickled (for refusal tests)."""

import os


class CodeRunningPayload:
    """Unpickling this calls ``os.system("touch MARKER")``: a loader that runs it creates the marker."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
