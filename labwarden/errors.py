"""labwarden's exceptions: one root, LabwardenError, and a class per kind of failure.

ConfigError is raised at load time, before anything starts, and names the
file, the field (a dotted path such as ``services.web.x-labwarden.gateway``
or ``allow[2].ports[1]``) and what is wrong, in words for people.
"""


class LabwardenError(Exception):
    """Root of every error labwarden raises on purpose."""


class ConfigError(LabwardenError):
    """A topology or policy file says something labwarden cannot accept."""

    def __init__(self, file, field, problem):
        # args carry all three so the error pickles (pytest-xdist, subprocesses)
        super().__init__(str(file), field, problem)
        self.file = str(file)
        self.field = field
        self.problem = problem

    def __str__(self):
        return f"{self.file}: {self.field}: {self.problem}"


class ProbeError(LabwardenError):
    """A probe could not run: a missing tool in a node, an agent that died."""


class LabError(LabwardenError):
    """The lab could not be brought up, reached or torn down."""


class CaptureIncomplete(ProbeError):
    """A node's capture lost frames (the agent's cap, the kernel's drops): it proves no absence."""
