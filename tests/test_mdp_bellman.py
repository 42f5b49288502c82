"""course_utils.mdp_bellman (generated from notebooks/14_mdp_bellman.ipynb): exact solvers against
independent references (linear algebra, Python loops, Sutton & Barto's published tables),
gradients, and every bad-input error."""
import itertools

import pytest
import torch
from torch.testing import assert_close

from course_utils import mdp_bellman as mb

f64 = torch.float64

# Sutton & Barto, Reinforcement Learning: An Introduction, 2nd ed. (2018), typed in from the book.
FIG_3_2 = torch.tensor([[3.3, 8.8, 4.4, 5.3, 1.5], [1.5, 3.0, 2.3, 1.9, 0.5],
                        [0.1, 0.7, 0.7, 0.4, -0.4], [-1.0, -0.4, -0.4, -0.6, -1.2],
                        [-1.9, -1.3, -1.2, -1.4, -2.0]], dtype=f64)
FIG_3_5 = torch.tensor([[22.0, 24.4, 22.0, 19.4, 17.5], [19.8, 22.0, 19.8, 17.8, 16.0],
                        [17.8, 19.8, 17.8, 16.0, 14.4], [16.0, 17.8, 16.0, 14.4, 13.0],
                        [14.4, 16.0, 14.4, 13.0, 11.7]], dtype=f64)
FIG_4_1 = torch.tensor([[0, -14, -20, -22], [-14, -18, -20, -20],
                        [-20, -20, -18, -14], [-22, -20, -14, 0]], dtype=f64)

SIZES = [(1, 1), (2, 3), (7, 2), (13, 5)]          # awkward: one state, one action, odd sizes
GAMMAS = [0.0, 0.5, 0.99]


def random_policy(S, A, seed=0):
    p = torch.rand(S, A, generator=torch.Generator().manual_seed(seed), dtype=f64) + 0.05
    return p / p.sum(1, keepdim=True)


def loops_q(P, R, gamma, v):
    """q(s, a) = R[s, a] + γ Σ_s' P[s, a, s'] v(s') with Python loops."""
    S, A = R.shape
    return torch.tensor([[R[s, a].item() + gamma * sum(P[s, a, t].item() * v[t].item()
                                                       for t in range(S))
                          for a in range(A)] for s in range(S)], dtype=f64)


# ---- closed form vs iteration -----------------------------------------------------------------

@pytest.mark.parametrize("S, A", SIZES)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_policy_evaluation_closed_form_vs_iteration(S, A, gamma):
    P, R, g = mb.random_mdp(S, A, gamma, seed=S * 10 + A)
    pi = random_policy(S, A, seed=S)
    exact = mb.policy_value(P, R, g, pi)
    P_pi, R_pi = mb.induced_mrp(P, R, pi)
    ref = torch.linalg.inv(torch.eye(S, dtype=f64) - gamma * P_pi) @ R_pi
    assert_close(exact, ref, atol=1e-10, rtol=1e-10)
    assert_close(mb.mrp_value(P_pi, R_pi, gamma), exact, atol=1e-12, rtol=0)
    v, deltas = mb.policy_evaluation(P, R, g, pi, tol=1e-12, return_deltas=True)
    assert_close(mb.policy_evaluation(P, R, g, pi, tol=1e-12), v, atol=0, rtol=0)
    assert_close(v, exact, atol=1e-9, rtol=0)
    assert all(b <= gamma * a + 1e-12 for a, b in zip(deltas, deltas[1:]))   # γ-contraction


def test_induced_mrp_matches_loops():
    (P, R, _), pi = mb.random_mdp(4, 3, 0.9, seed=5), random_policy(4, 3, seed=6)
    P_pi, R_pi = mb.induced_mrp(P, R, pi)
    for s in range(4):
        assert_close(R_pi[s], sum(pi[s, a] * R[s, a] for a in range(3)))
        for t in range(4):
            assert_close(P_pi[s, t], sum(pi[s, a] * P[s, a, t] for a in range(3)))
    assert_close(P_pi.sum(1), torch.ones(4, dtype=f64))


def test_mrp_value_takes_float32_and_ints_and_returns_float64():
    P = torch.tensor([[0.5, 0.5], [0.25, 0.75]], dtype=torch.float32)
    v = mb.mrp_value(P, torch.tensor([1, -2]), 0.9)
    assert v.dtype == f64
    ref = torch.linalg.solve(torch.eye(2, dtype=f64) - 0.9 * P.double(), torch.tensor([1.0, -2.0], dtype=f64))
    assert_close(v, ref)


def test_stationary_distribution_vs_eigenvector_and_long_run():
    for seed, S in [(0, 1), (1, 3), (2, 8)]:
        P = mb.random_mdp(S, 1, seed=seed).P[:, 0]                   # (S, S): a random chain
        pi = mb.stationary_distribution(P)
        evals, evecs = torch.linalg.eig(P.T)
        k = int((evals - 1).abs().argmin())
        assert_close(pi, evecs[:, k].real / evecs[:, k].real.sum())
        assert_close(pi, torch.linalg.matrix_power(P, 500)[0])
        assert_close(pi @ P, pi)


# ---- Sutton & Barto's tables ------------------------------------------------------------------

def test_figure_3_2_random_policy_5x5():
    P, R, gamma = mb.sutton_barto_5x5()
    v = mb.policy_value(P, R, gamma, mb.uniform_policy(25, 4)).view(5, 5)         # (5, 5)
    assert_close(v, FIG_3_2, atol=0.05 + 1e-9, rtol=0)          # printed to one decimal
    v_it = mb.policy_evaluation(P, R, gamma, mb.uniform_policy(25, 4)).view(5, 5)  # (5, 5)
    assert_close(v_it, FIG_3_2, atol=0.05 + 1e-9, rtol=0)


def test_figure_3_5_optimal_5x5():
    v, _ = mb.value_iteration(*mb.sutton_barto_5x5())
    assert_close(v.view(5, 5), FIG_3_5, atol=0.05 + 1e-9, rtol=0)
    v_pi, _ = mb.policy_iteration(*mb.sutton_barto_5x5())
    assert_close(v_pi.view(5, 5), FIG_3_5, atol=0.05 + 1e-9, rtol=0)


def test_figure_4_1_random_policy_4x4():
    P, R, gamma = mb.sutton_barto_4x4()
    assert_close(mb.policy_value(P, R, gamma, mb.uniform_policy(16, 4)).view(4, 4), FIG_4_1,
                 atol=1e-9, rtol=0)
    v_it = mb.policy_evaluation(P, R, gamma, mb.uniform_policy(16, 4))
    assert_close(v_it.view(4, 4), FIG_4_1, atol=1e-8, rtol=0)


def test_exercise_4_1_q_values_4x4():
    P, R, gamma = mb.sutton_barto_4x4()
    q = mb.q_from_v(P, R, gamma, mb.policy_value(P, R, gamma, mb.uniform_policy(16, 4)))
    down = mb.ACTIONS.index("down")
    assert_close(q[11, down], torch.tensor(-1.0, dtype=f64))
    assert_close(q[7, down], torch.tensor(-15.0, dtype=f64))


# ---- v and q, optimality ----------------------------------------------------------------------

@pytest.mark.parametrize("S, A", SIZES)
def test_q_from_v_and_v_from_q(S, A):
    (P, R, gamma), pi = mb.random_mdp(S, A, 0.8, seed=3), random_policy(S, A, seed=4)
    v = mb.policy_value(P, R, gamma, pi)
    # q_π solved on its own: q = R + γ M q over state-action pairs, M[(s,a),(s',a')] = P π
    M = torch.einsum("sat,tb->satb", P, pi).reshape(S * A, S * A)           # (SA, SA)
    q = torch.linalg.solve(torch.eye(S * A, dtype=f64) - 0.8 * M, R.reshape(-1)).view(S, A)  # (S, A)
    assert_close(mb.q_from_v(P, R, gamma, v), q)
    assert_close(mb.q_from_v(P, R, gamma, v), loops_q(P, R, gamma, v))
    assert_close(mb.v_from_q(pi, q), v)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("S, A", [(1, 2), (6, 3), (11, 4)])
def test_policy_iteration_agrees_with_value_iteration(S, A, seed):
    mdp = mb.random_mdp(S, A, 0.9, seed=seed)
    v_vi, pi_vi = mb.value_iteration(*mdp, tol=1e-12)
    v_pi, pi, history = mb.policy_iteration(*mdp, return_history=True)
    assert_close(v_pi, v_vi, atol=1e-9, rtol=0)
    assert torch.equal(mb.greedy_policy(*mdp, v_vi), pi)
    assert torch.equal(pi_vi, pi)
    assert_close(mb.q_from_v(*mdp, v_vi).amax(1), v_vi, atol=1e-9, rtol=0)   # Bellman optimality
    for a, b in zip(history, history[1:]):                                        # improvement theorem
        assert bool((b >= a - 1e-9).all())


@pytest.mark.parametrize("S, A, seed", [(1, 3, 0), (4, 2, 1), (3, 3, 2)])
def test_no_deterministic_policy_beats_v_star(S, A, seed):
    """Brute force over all A**S deterministic policies: the best of them reaches v* everywhere."""
    mdp = mb.random_mdp(S, A, 0.9, seed=seed)
    v_star, _ = mb.value_iteration(*mdp, tol=1e-12)
    values = torch.stack([mb.policy_value(*mdp, torch.nn.functional.one_hot(torch.tensor(acts), A).double())
                          for acts in itertools.product(range(A), repeat=S)])     # (A**S, S)
    assert bool((values <= v_star + 1e-9).all())
    assert_close(values.amax(0), v_star, atol=1e-9, rtol=0)


def test_policy_iteration_agrees_on_both_grids():
    for mdp in (mb.sutton_barto_5x5(), mb.sutton_barto_4x4(), mb.sutton_barto_5x5(0.5)):
        v_vi, pi_vi = mb.value_iteration(*mdp)
        v_pi, pi = mb.policy_iteration(*mdp)
        assert_close(v_pi, v_vi, atol=1e-8, rtol=0)
        assert torch.equal(mb.greedy_policy(*mdp, v_vi), pi)
        assert torch.equal(pi_vi, pi)


def test_greedy_policy_splits_ties_evenly():
    mdp = mb.sutton_barto_5x5()
    pi = mb.greedy_policy(*mdp, mb.value_iteration(*mdp)[0])
    assert_close(pi[1], torch.full((4,), 0.25, dtype=f64))          # from A every action jumps
    assert_close(pi[0], torch.tensor([0, 0, 0, 1.0], dtype=f64))     # (0, 0): right, towards A
    assert_close(pi.sum(1), torch.ones(25, dtype=f64))


# ---- gradients --------------------------------------------------------------------------------

def test_gradient_of_mrp_value_is_the_inverse():
    P = mb.random_mdp(5, 1, seed=9).P[:, 0]                        # (S, S)
    R = torch.randn(5, dtype=f64, requires_grad=True)
    mb.mrp_value(P, R, 0.7)[2].backward()
    inv = torch.linalg.inv(torch.eye(5, dtype=f64) - 0.7 * P)       # ∂V/∂R = (I − γP)⁻¹
    assert_close(R.grad, inv[2])


def test_policy_value_gradcheck_through_softmax_policy():
    mdp = mb.random_mdp(4, 3, 0.9, seed=11)
    logits = torch.randn(4, 3, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: mb.policy_value(*mdp, z.softmax(-1)), (logits,))


def test_policy_gradient_theorem():
    """∇θ v_π(s0) = Σ_s d(s) Σ_a ∇θ π(a|s) q_π(s, a), d = discounted visits from s0
    (Sutton & Barto 2018, §13.2): autograd through the closed form must agree."""
    P, R, gamma = mb.random_mdp(5, 3, 0.8, seed=12)
    logits = torch.randn(5, 3, dtype=f64, requires_grad=True)
    mb.policy_value(P, R, gamma, logits.softmax(-1))[0].backward()
    with torch.no_grad():
        pi = logits.softmax(-1)
        q = mb.q_from_v(P, R, gamma, mb.policy_value(P, R, gamma, pi))
        P_pi, _ = mb.induced_mrp(P, R, pi)
        d = torch.linalg.inv(torch.eye(5, dtype=f64) - 0.8 * P_pi)[0]   # (S,) visits from s0 = 0
        adv = q - (pi * q).sum(1, keepdim=True)                         # ∂/∂logits of softmax
        ref = d[:, None] * pi * adv
    assert_close(logits.grad, ref)


# ---- builders ---------------------------------------------------------------------------------

def test_gridworld_layout():
    mdp = mb.sutton_barto_5x5()
    assert isinstance(mdp, tuple) and mdp._fields == ("P", "R", "gamma")
    P, R, gamma = mdp                                                  # unpacks like a tuple
    assert P.shape == (25, 4, 25) and R.shape == (25, 4) and gamma == 0.9
    assert P.dtype == R.dtype == f64 and isinstance(gamma, float)
    assert P[1, :, 21].eq(1).all() and R[1].eq(10).all()              # A -> A'
    assert P[3, :, 13].eq(1).all() and R[3].eq(5).all()               # B -> B'
    assert R[24].tolist() == [0.0, -1.0, 0.0, -1.0]                   # (4, 4): down, right bump
    assert not mb.terminal_states(P, R).any()
    P4, R4, gamma4 = mb.sutton_barto_4x4()
    terminal = mb.terminal_states(P4, R4)
    assert terminal.nonzero().flatten().tolist() == [0, 15] and gamma4 == 1.0
    assert R4[~terminal].eq(-1).all()


def test_random_mdp_is_valid_and_seeded():
    a, b = mb.random_mdp(3, 2, seed=4), mb.random_mdp(3, 2, seed=4)
    assert torch.equal(a.P, b.P) and torch.equal(a.R, b.R)
    assert_close(a.P.sum(-1), torch.ones(3, 2, dtype=f64))


# ---- bad inputs -------------------------------------------------------------------------------

P_OK, R_OK = torch.full((2, 3, 2), 0.5, dtype=f64), torch.zeros(2, 3, dtype=f64)
PI_OK, V_OK = torch.full((2, 3), 1 / 3, dtype=f64), torch.zeros(2, dtype=f64)


def absorbing_P():
    """State 0 absorbing under every action; state 1 goes to 0 or 1 with probability 1/2."""
    P = P_OK.clone()
    P[0] = torch.tensor([1.0, 0.0])
    return P


def trapped_P():
    """State 0 absorbing (terminal with R = 0), state 1 absorbing too: it never reaches state 0."""
    return torch.eye(2, dtype=f64)[:, None].expand(2, 3, 2).clone()      # (S, A, S)


# Every public function that takes an MDP checks it the same way, through (P, R, gamma).
MDP_FUNCTIONS = {
    "value_iteration": lambda P, R, g: mb.value_iteration(P, R, g),
    "policy_iteration": lambda P, R, g: mb.policy_iteration(P, R, g),
    "policy_value": lambda P, R, g: mb.policy_value(P, R, g, PI_OK),
    "policy_evaluation": lambda P, R, g: mb.policy_evaluation(P, R, g, PI_OK),
    "q_from_v": lambda P, R, g: mb.q_from_v(P, R, g, V_OK),
    "greedy_policy": lambda P, R, g: mb.greedy_policy(P, R, g, V_OK),
}


@pytest.mark.parametrize("who", list(MDP_FUNCTIONS))
@pytest.mark.parametrize("P, R, gamma, exc, match", [
    (P_OK[0], R_OK, 0.9, ValueError, r"P must have shape \(S, A, S\)"),
    (torch.full((2, 3, 4), 0.25), R_OK, 0.9, ValueError, r"P must have shape \(S, A, S\)"),
    (P_OK * 0.9, R_OK, 0.9, ValueError, r"row P\[0, 0, :\] must sum to 1"),
    (P_OK * torch.tensor([3.0, -1.0]), R_OK, 0.9, ValueError, "must be >= 0"),
    (P_OK, R_OK.T, 0.9, ValueError, r"R must have shape \(S, A\) = \(2, 3\), got \(3, 2\)"),
    (P_OK, R_OK + float("nan"), 0.9, ValueError, "R must be finite"),
    (P_OK.to(torch.complex128), R_OK, 0.9, TypeError, "P must be a real tensor"),
    ("P", R_OK, 0.9, TypeError, "P must be a tensor or array of numbers"),
    (P_OK, R_OK, 1.5, ValueError, r"gamma must be a number in \[0, 1\], got 1.5"),
    (P_OK, R_OK, -0.1, ValueError, r"gamma must be a number in \[0, 1\]"),
    (P_OK, R_OK, True, ValueError, r"gamma must be a number in \[0, 1\]"),
    (P_OK, R_OK, 1.0, ValueError, "gamma = 1 is only allowed for an episodic problem"),
    # absorbing but paying 1 per step: not terminal, so still not episodic
    (absorbing_P(), R_OK + 1, 1.0, ValueError, "gamma = 1 is only allowed for an episodic problem"),
    # a terminal state exists, but state 1 is stuck in a loop of its own whatever the policy
    (trapped_P(), torch.tensor([[0.0] * 3, [-1.0] * 3], dtype=f64), 1.0, ValueError,
     "state 1 never reaches one"),
])
def test_mdp_functions_reject(who, P, R, gamma, exc, match):
    with pytest.raises(exc, match=f"^{who}: .*{match}"):
        MDP_FUNCTIONS[who](P, R, gamma)


def test_valid_episodic_mdp_is_accepted():
    assert mb.terminal_states(absorbing_P(), R_OK).tolist() == [True, False]
    v, pi = mb.value_iteration(absorbing_P(), R_OK, 1.0)
    assert v.dtype == f64 and v.tolist() == [0.0, 0.0] and pi.shape == (2, 3)
    # a zero-reward self-loop is terminal too: staying forever there is worth 0
    assert mb.terminal_states(trapped_P(), torch.zeros(2, 3)).tolist() == [True, True]


MDP = mb.random_mdp(3, 2, seed=0)
GRID4 = mb.sutton_barto_4x4()
ALWAYS_UP = torch.nn.functional.one_hot(torch.zeros(16, dtype=torch.long), 4).double()


@pytest.mark.parametrize("call, exc, match", [
    (lambda: mb.mrp_value(torch.ones(2, 3) / 3, torch.zeros(2), 0.9), ValueError, r"P must have shape \(S, S\), got \(2, 3\)"),
    (lambda: mb.mrp_value(torch.eye(2), torch.zeros(3), 0.9), ValueError, r"R must have shape \(S,\) = \(2,\), got \(3,\)"),
    (lambda: mb.mrp_value(torch.tensor([[0.5, 0.6], [0.5, 0.5]]), torch.zeros(2), 0.9), ValueError, r"row P\[0, :\] must sum to 1"),
    (lambda: mb.mrp_value(torch.tensor([[1.5, -0.5], [0.5, 0.5]]), torch.zeros(2), 0.9), ValueError, "must be >= 0"),
    (lambda: mb.mrp_value(torch.eye(2), torch.zeros(2), 2), ValueError, r"gamma must be a number in \[0, 1\]"),
    (lambda: mb.mrp_value(torch.eye(2), torch.ones(2), 1.0), ValueError, "mrp_value: gamma = 1 is only allowed for an episodic problem"),
    (lambda: mb.mrp_value(torch.eye(2), torch.tensor([0.0, 1.0]), 1.0), ValueError, "state 1 never reaches one"),
    (lambda: mb.terminal_states(torch.ones(2, 3) / 3, torch.zeros(2)), ValueError, r"P must have shape \(S, S\) or \(S, A, S\)"),
    (lambda: mb.terminal_states(torch.eye(2), torch.zeros(2, 1)), ValueError, r"R must have shape \(S,\) = \(2,\)"),
    (lambda: mb.terminal_states(P_OK, torch.zeros(2)), ValueError, r"R must have shape \(S, A\) = \(2, 3\)"),
    (lambda: mb.stationary_distribution(torch.ones(3, 2) / 2), ValueError, r"P must have shape \(S, S\)"),
    (lambda: mb.stationary_distribution(torch.tensor([[0.5, 0.6], [0.5, 0.5]])), ValueError, "must sum to 1"),
    (lambda: mb.uniform_policy(0, 2), ValueError, "S and A must be ints >= 1"),
    (lambda: mb.induced_mrp(*MDP[:2], torch.ones(2, 3) / 2), ValueError, r"policy must have shape \(S, A\) = \(3, 2\), got \(2, 3\)"),
    (lambda: mb.policy_value(*MDP, torch.ones(3, 2)), ValueError, r"row policy\[0, :\] must sum to 1"),
    (lambda: mb.policy_evaluation(*MDP, -torch.ones(3, 2)), ValueError, "policy holds probabilities, so it must be >= 0"),
    (lambda: mb.q_from_v(*MDP, torch.zeros(4)), ValueError, r"V must have shape \(S,\) = \(3,\), got \(4,\)"),
    (lambda: mb.v_from_q(torch.ones(3, 2) / 2, torch.zeros(2, 3)), ValueError, r"policy must have shape \(S, A\) = \(2, 3\), like Q"),
    (lambda: mb.v_from_q(torch.ones(3, 2) / 2, torch.zeros(6)), ValueError, r"Q must have shape \(S, A\), got \(6,\)"),
    (lambda: mb.greedy_policy(*MDP, torch.zeros(3, 1)), ValueError, r"V must have shape \(S,\)"),
    (lambda: mb.policy_evaluation(*MDP, torch.ones(3, 2) / 2, tol=0), ValueError, "tol must be a number > 0"),
    (lambda: mb.value_iteration(*MDP, tol=-1.0), ValueError, "tol must be a number > 0"),
    (lambda: mb.policy_evaluation(*GRID4, ALWAYS_UP), ValueError, "every state must reach a terminal state under the policy"),
    (lambda: mb.policy_evaluation(*MDP, torch.ones(3, 2) / 2, max_sweeps=3), RuntimeError, "after 3 sweeps"),
    (lambda: mb.value_iteration(*MDP, max_sweeps=3), RuntimeError, "after 3 sweeps"),
    (lambda: mb.policy_value(*GRID4, ALWAYS_UP), ValueError, "policy_value: .* state 1 never reaches one"),
    (lambda: mb.policy_iteration(*GRID4, policy=ALWAYS_UP), ValueError, "policy_iteration: with gamma = 1 every state must reach"),
    (lambda: mb.policy_iteration(*mb.sutton_barto_5x5(), max_iters=1), RuntimeError, "still changed after 1 iterations"),
    (lambda: mb.gridworld(0, 3, gamma=0.9), ValueError, "rows and cols must be ints >= 1"),
    (lambda: mb.gridworld(3, 3, gamma=0.9, jumps={(3, 0): ((0, 0), 1.0)}), ValueError, r"cell \(3, 0\) is outside the 3×3 grid"),
    (lambda: mb.gridworld(3, 3, gamma=0.9, terminal=[(0, 5)]), ValueError, "outside the 3×3 grid"),
    (lambda: mb.gridworld(3, 3, gamma=0.9, jumps={(0, 0): ((1, 1), 1.0)}, terminal=[(0, 0)]), ValueError, "cannot both jump and be terminal"),
    (lambda: mb.gridworld(3, 3, gamma=1.0), ValueError, "gridworld: gamma = 1 is only allowed for an episodic problem"),
    (lambda: mb.sutton_barto_5x5(1.0), ValueError, "only allowed for an episodic problem"),
    (lambda: mb.random_mdp(0, 2), ValueError, "S and A must be ints >= 1"),
    (lambda: mb.random_mdp(2, 2, gamma=1.2), ValueError, r"random_mdp: gamma must be a number in \[0, 1\]"),
])
def test_bad_inputs_raise(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---- issue 14: dtype-aware row sums, reducible and periodic chains, γ = 1 with a free loop ------

WEATHER = [[0.8, 0.15, 0.05], [0.4, 0.40, 0.20], [0.2, 0.40, 0.40]]


def test_rows_sum_to_one_within_the_rounding_of_the_input_dtype():
    ref = mb.stationary_distribution(torch.tensor(WEATHER, dtype=f64))
    assert_close(mb.stationary_distribution(WEATHER), ref, atol=0, rtol=0)        # a Python list
    assert_close(mb.stationary_distribution(torch.tensor(WEATHER, dtype=torch.float32)), ref,
                 atol=1e-6, rtol=0)                                                # float32
    assert_close(mb.stationary_distribution(torch.tensor(WEATHER).numpy()), ref, atol=1e-6, rtol=0)
    v = mb.mrp_value(torch.tensor(WEATHER, dtype=torch.float32), [1.0, 0.0, -1.0], 0.9)
    assert v.dtype == f64
    pi = torch.full((3, 7), 1 / 7, dtype=torch.float32)                            # 7 × (1/7)f ≠ 1
    assert mb.v_from_q(pi, torch.zeros(3, 7)).shape == (3,)


def test_a_row_that_is_really_off_is_refused_with_enough_digits():
    bad = [[0.8, 0.16, 0.05], [0.4, 0.4, 0.2], [0.2, 0.4, 0.4]]                    # row 0: 1.01
    for P in (bad, torch.tensor(bad, dtype=torch.float32)):
        with pytest.raises(ValueError, match=r"row P\[0, :\] must sum to 1 .* but sums to 1\.01"):
            mb.stationary_distribution(P)
    # float32 values passed on as float64 are judged as float64: the error shows the difference
    P = torch.tensor(WEATHER, dtype=torch.float32).to(f64)
    P[1] = P[1] * (1 + 1e-7)
    with pytest.raises(ValueError, match=r"sums to 1\.0000001\d*; it is the worst of"):
        mb.stationary_distribution(P)


def test_worst_row_is_named():
    P = torch.tensor([[0.5, 0.5], [0.5, 0.52]], dtype=f64)
    P = torch.cat([P, torch.tensor([[0.5, 0.6]], dtype=f64)])[[0, 2, 1]]          # rows 1 and 2 bad
    with pytest.raises(ValueError, match=r"row P\[1, :\] .* sums to 1\.1; it is the worst of 2"):
        mb.mrp_value(torch.cat([P, torch.zeros(3, 1, dtype=f64)], 1), torch.zeros(3), 0.9)


def test_periodic_chain_has_a_stationary_distribution_but_no_limit():
    P = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=f64)
    assert_close(mb.stationary_distribution(P), torch.tensor([0.5, 0.5], dtype=f64))
    mu = torch.tensor([1.0, 0.0], dtype=f64)
    assert not torch.allclose(mu @ torch.linalg.matrix_power(P, 101),
                              mu @ torch.linalg.matrix_power(P, 100))


def test_reducible_chain_is_refused_by_name_not_linalg_error():
    for P, classes in [(torch.eye(2, dtype=f64), r"\{0\}, \{1\}"),
                       (torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0.2, 0.2, 0.3, 0.3],
                                      [0, 0, 0, 1.0]], dtype=f64), r"\{0, 1\}, \{3\}")]:
        with pytest.raises(ValueError, match=r"stationary_distribution: P is reducible, with 2 "
                                             r"closed classes .*\(" + classes + r"\)"):
            mb.stationary_distribution(P)
    # one closed class plus a transient state: a unique π, zero on the transient state
    P = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.3, 0.7], [0.0, 0.6, 0.4]], dtype=f64)
    pi = mb.stationary_distribution(P)
    assert_close(pi @ P, pi)
    assert pi[0].item() == 0.0


def corridor(gamma=1.0):
    """1×4 corridor, −1 per move, terminal at the right end, bumping a wall free (and in place)."""
    return mb.gridworld(1, 4, gamma=gamma, step_reward=-1.0, off_grid_reward=0.0, terminal=[(0, 3)])


def test_gamma_one_with_a_free_loop_value_iteration_refuses():
    v_pi, pi = mb.policy_iteration(*corridor())
    assert_close(v_pi, torch.tensor([-3.0, -2.0, -1.0, 0.0], dtype=f64))
    assert bool((pi[:3, mb.ACTIONS.index("right")] > 0).all())                     # it ends
    for v in (torch.zeros(4, dtype=f64), v_pi):        # both solve the optimality equation
        assert_close(mb.q_from_v(*corridor(), v).amax(1), v)
    with pytest.raises(ValueError, match="value_iteration: with gamma = 1, the greedy policy .* "
                                         "never reaches a terminal state from state 0"):
        mb.value_iteration(*corridor())
    v_disc, pi_disc = mb.value_iteration(*corridor(0.99))   # discounted: bumping is optimal
    assert_close(v_disc, torch.zeros(4, dtype=f64))
    assert bool((pi_disc[:3, mb.ACTIONS.index("right")] == 0).all())


def test_gamma_one_policy_iteration_refuses_an_improved_policy_that_never_ends():
    """State 0: 'loop' pays +1 and stays, 'go' pays 0 and ends: from the uniform policy (which
    ends) the improvement picks 'loop' forever."""
    P = torch.zeros(2, 2, 2, dtype=f64)
    P[0, 0, 0] = P[0, 1, 1] = P[1, :, 1] = 1.0
    R = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=f64)
    with pytest.raises(ValueError, match="policy_iteration: with gamma = 1, the improved "
                                         r"\(greedy\) policy never reaches a terminal state"):
        mb.policy_iteration(P, R, 1.0)


def test_gamma_one_solvers_still_agree_where_every_greedy_policy_ends():
    for mdp in (mb.sutton_barto_4x4(),):
        assert_close(mb.value_iteration(*mdp)[0], mb.policy_iteration(*mdp)[0], atol=1e-8, rtol=0)


# ---- the notebook's exercise checkers catch the mistakes their tasks invite ----------------------

def _exercise_cells():
    import nbformat
    from pathlib import Path
    nb = nbformat.read(Path(__file__).resolve().parent.parent / "notebooks" / "14_mdp_bellman.ipynb",
                       as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    setup = next(s for s in code if s.startswith("ex_mdps = "))
    return setup, {s.split("—")[0].strip("# ").strip(): s for s in code if s.startswith("# Exercise 14.")}


WRONG = {   # exercise: (function name, a wrong body)
    "Exercise 14.1": ("backup", "return (policy * (R + torch.einsum('sat,t->sa', P, V))).sum(1)"),
    "Exercise 14.2": ("q_values", "return R + P @ V"),
    "Exercise 14.3/no γ": ("greedy_actions", "return (R + torch.einsum('sat,t->sa', P, V)).argmax(1)"),
    "Exercise 14.3/last tie": ("greedy_actions",
                               "q = R + gamma * torch.einsum('sat,t->sa', P, V)\n"
                               "    return q.shape[1] - 1 - q.flip(1).argmax(1)"),
}


@pytest.mark.parametrize("case", list(WRONG))
def test_exercise_checkers_catch_forgotten_gamma_and_wrong_tie_break(case):
    import re
    from course_utils.exercises import BEGIN, END, ExerciseError, check_function
    setup, cells = _exercise_cells()
    name = case.split("/")[0]
    fn, body = WRONG[case]
    cell = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), body, cells[name], flags=re.S)
    ns = {"torch": torch, "f64": f64, "random_mdp": mb.random_mdp, "check_function": check_function}
    exec(setup, ns)                                                    # noqa: S102
    with pytest.raises(ExerciseError, match=name):
        exec(cell, ns)                                                 # noqa: S102
    right = {"torch": torch, "f64": f64, "random_mdp": mb.random_mdp, "check_function": check_function}
    exec(setup, right)                                                 # noqa: S102
    exec(cells[name], right)                                           # the solution passes
