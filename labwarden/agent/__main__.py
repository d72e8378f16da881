"""Entry point of the agent zipapp (labwarden.probe.ship builds it from this folder).

    python3 agent.pyz REQUEST|-              # the probe agent (agent.py)
    python3 agent.pyz delayline COMMAND ...  # the userspace delay line (delayline.py)
    python3 agent.pyz enter --node N --netns P --container ID [--pid-start T] -- COMMAND...
                                             # COMMAND in a node's namespace, checked (netns.py)
"""

import sys

if len(sys.argv) > 1 and sys.argv[1] == "delayline":
    import delayline
    sys.exit(delayline.main(sys.argv[1:]))
if len(sys.argv) > 1 and sys.argv[1] == "enter":
    import netns
    sys.exit(netns.main(sys.argv[1:]))
import agent
sys.exit(agent.main(sys.argv))
