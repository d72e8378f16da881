"""The segmentation matrix: every node to every other node's addresses.

One test per cell, parametrized from the policy; all cells are probed at once
by the session's `matrix` fixture.
"""


def test_cell(matrix_cell, labwarden_policy):
    assert matrix_cell.ok, matrix_cell.message(labwarden_policy)
