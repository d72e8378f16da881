"""Flow fuzzing: flows nobody thought of, drawn by hypothesis, sent for real, judged by the policy.

- `flow`: `FuzzFlow`, one flow: an ordinary probe (tcp/udp/icmp echo, judged by its
  verdict like a matrix cell) or an *odd* packet crafted with scapy (TCP flag
  combinations, IP fragments, IP options, forged sources, TTL 1, ICMP types and
  codes, port 0), judged by whether it arrives at the node it is addressed to;
  `spec()`/`parse()` give the one-line form the replay command takes;
- `oracle`: `expect_flow(policy, flow)` for both kinds, and the odd packets' rules;
- `aims`: when the router is ours, its config's rules as aims (`config_aims`);
- `strategies`: hypothesis strategies built from the topology, the policy and the aims;
- `packets`: odd packets crafted with scapy, and found again where they arrive;
- `fuzzer`: `FlowFuzzer`, which sends batches, remembers what each flow did and
  re-sends what fails before it counts (`Failure`, flaky or not);
- `hunt`: `hunt`, which lets hypothesis draw every batch of its profile, then fails
  with every failure `describe`d (traced on the router when it is ours, with a
  replay command).

No Docker here but through the `lab` handed in; the oracle is pure. Rule fuzzing
(random router rulesets) is `labwarden.fuzz.rules`.
"""
