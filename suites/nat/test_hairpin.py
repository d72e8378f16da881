"""Hairpin: inside clients using the router's public address reach the forwards
exactly when the policy says so (`hairpin: true`), and are stopped otherwise."""


def test_hairpin_behaves_as_declared(lab, nat_policy, hairpin_cells):
    wrong = [c.message(nat_policy) for c in hairpin_cells if not c.ok]
    assert not wrong, f"hairpin: {str(nat_policy.hairpin).lower()} in the policy, but:\n  " + "\n  ".join(wrong)
