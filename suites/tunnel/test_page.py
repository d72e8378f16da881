"""The published page through the edge: every visitor on the internet asks the
tunnel's edge for it and gets, byte for byte, what the client's local server
serves (and the file the policy names). A tunnel that is down reads
`tunnel down`, with what the edge did."""


def test_visitors_get_the_page_through_the_edge(page_checks, tunnel_policy, tunnel_case, say):
    checks = page_checks[tunnel_case.name]
    assert checks, f"tunnel '{tunnel_case.name}': no node on the internet to visit the edge from"
    up = [c.explain(tunnel_policy) for c in checks if c.state == "up"]
    if up:
        say("\n" + "\n".join(up))
    wrong = [c.explain(tunnel_policy) for c in checks if c.state != "up"]
    assert not wrong, "\n".join(wrong)
