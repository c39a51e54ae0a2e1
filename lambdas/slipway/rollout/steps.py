"""What each state of the rollout state machine means to a person following a deploy. Pure.

:data:`STEPS` names every state of the workflow that :mod:`constructs.rollout` builds, in
words: the API reports the step a deploy is at from the state its execution last entered.
A test compares these names with the synthesized definition, both ways, so a state added
or renamed there without its words here fails.
"""

from __future__ import annotations

STEPS: dict[str, str] = {
    "Lock": "taking the deploy lock",
    "Plan": "planning batches",
    "Planned?": "planning batches",
    "Stage": "staging the release on every instance (while they serve)",
    "WaitStageCommand": "staging the release on every instance (while they serve)",
    "CheckStageCommand": "staging the release on every instance (while they serve)",
    "StageCommand?": "staging the release on every instance (while they serve)",
    "Send": "switching a batch to the release",
    "WaitCommand": "switching a batch to the release",
    "CheckCommand": "switching a batch to the release",
    "Command?": "switching a batch to the release",
    "WaitBake": "baking (watching alarms and the batch's health)",
    "CheckBake": "baking (watching alarms and the batch's health)",
    "Bake?": "baking (watching alarms and the batch's health)",
    "Advance": "moving to the next batch",
    "MoreBatches?": "moving to the next batch",
    "Promote": "moving current",
    "Converge": "deploying to instances launched meanwhile",
    "Converging?": "deploying to instances launched meanwhile",
    "WaitConvergeCommand": "deploying to instances launched meanwhile",
    "CheckConvergeCommand": "deploying to instances launched meanwhile",
    "ConvergeCommand?": "deploying to instances launched meanwhile",
    "Unlock": "releasing the deploy lock",
    "Deployed": "deployed",
    "Rollback": "rolling back",
    "RollbackSent?": "rolling back",
    "WaitRollbackCommand": "rolling back",
    "CheckRollbackCommand": "rolling back",
    "RollbackCommand?": "rolling back",
    "UnlockAfterRollback": "releasing the deploy lock",
    "RolledBack": "rolled back",
    "Refused": "refused",
    "RequestRefused": "refused: not a rollout this environment runs",
    "ConvergeFailed": "reporting instances that did not take the release",
    "UnlockAfterConverge": "releasing the deploy lock",
    "DeployedIncompletely": "deployed, except on instances launched meanwhile",
    "UnlockFailed": "releasing the deploy lock failed",
    "UnlockAfterRollbackFailed": "releasing the deploy lock failed",
    "UnlockAfterConvergeFailed": "releasing the deploy lock failed",
    "LockLeft": "the deploy lock was left to expire",
}


# The states of one batch: the timeline names the batch they worked on.
BATCH_STATES = frozenset(
    {
        "Send",
        "WaitCommand",
        "CheckCommand",
        "Command?",
        "WaitBake",
        "CheckBake",
        "Bake?",
        "Advance",
    }
)


# The states that switch a batch, whose words say what the switch is.
SWITCH_STATES = ("Send", "WaitCommand", "CheckCommand", "Command?")
# The same batch states while they put changed instances back on the previous release.
ROLLING_BACK: dict[str, str] = {
    **{name: "rolling back: " + STEPS[name] for name in BATCH_STATES},
    **{name: "rolling back: switching a batch back to the previous release" for name in SWITCH_STATES},
}
# A rolling restart's switch restarts the release a batch runs.
RESTARTING: dict[str, str] = {name: "restarting a batch" for name in SWITCH_STATES}


def step(state: str | None, *, rolling_back: bool = False, restarting: bool = False) -> str | None:
    """The words for ``state`` (``None`` before the first state); a batch state's while rolling
    back, or in a rolling restart."""
    if state is None:
        return None
    if rolling_back and state in ROLLING_BACK:
        return ROLLING_BACK[state]
    if restarting and state in RESTARTING:
        return RESTARTING[state]
    return STEPS.get(state, state)
