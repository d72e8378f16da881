"""What `labwarden --help` and `labwarden COMMAND --help` say: each command's purpose and examples.

(pytest's options are the plugin's, all `--lw-...`: `pytest --help`.)"""

import argparse

# command -> (one line for `labwarden --help`, examples for `labwarden COMMAND --help`)
COMMANDS = {
    "up": ("start a lab and leave it running (reused by pytest --lw-keep-lab and the commands)", """
  labwarden up                                    # the home lab (topologies/homelab)
  labwarden up --topology airplane                # a shipped lab, by name
  labwarden up --topology ./my-lab --router-config ./candidate.nft
"""),
    "down": ("remove a lab started by `up` (or every labwarden lab with --all)", """
  labwarden down                                  # the home lab
  labwarden down --topology airplane
  labwarden down --all                            # every labwarden lab on this Docker engine
"""),
    "status": ("list the running labwarden labs", """
  labwarden status
"""),
    "matrix": ("probe the segmentation matrix and print the grid (exit 1 on any mismatch)", """
  labwarden matrix                                # on the running home lab, else a temporary one
  labwarden matrix --topology openwrt-homelab --probe-timeout 2
  labwarden matrix --router-config topologies/homelab/mutants/servers-to-personal.nft
"""),
    "diff": ("probe the matrix under two router configs and print the flows whose verdict changed", """
  labwarden diff --before HEAD                    # the committed config against the working copy
  labwarden diff --topology homelab --before main:topologies/homelab/router/nftables.conf
  labwarden diff --before old.nft --after new.nft --report-dir reports/diff
"""),
}
EPILOG = """examples:
  labwarden up; labwarden matrix; labwarden down  # start a lab, probe it, remove it
  labwarden diff --before HEAD
  labwarden COMMAND --help                        # its options and examples

The suites run under pytest: pytest suites/isolation --lw-topology homelab (pytest --help: the --lw- options)."""


def command_help(name: str) -> dict:
    """Keyword arguments of `add_parser` for a command: its help line and its examples."""
    summary, examples = COMMANDS[name]
    return {"help": summary, "description": summary,
            "epilog": "examples:" + examples.rstrip(),
            "formatter_class": argparse.RawDescriptionHelpFormatter}
