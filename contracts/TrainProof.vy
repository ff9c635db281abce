# pragma version ~=0.4.3
# pragma experimental-codegen
"""
@title trainproof: job market, stakes and the dispute game
@notice A requester registers a training job and escrows the reward; a trainer accepts it
        with a stake and commits its checkpoint roots, in parts of COMMIT_PART run-tree leaves,
        from which the contract computes their Merkle root; during the
        challenge window anyone may dispute one checkpoint interval with a bond. Each
        dispute is a game that bisects, in turn:
          trace   - op-level state roots over the interval's k steps x L ops   (n-ary)
          open    - the one disputed op: its descriptor and the one-slot state change
          chunk   - the output tensor's chunk tree, down to one 1 KiB chunk
          element - one element of that chunk
          partial - for REDUCE_SUM / REDUCE_MAX / MATMUL: the sequential partial values
          one-step- operand elements proven against the agreed pre-state; the executor
                    computes the float32 result and the contract compares.
        LOAD_BATCH and FREE are decided when the op is opened. A party that does not move
        in time loses (anyone may call `timeout`). The trainer must win every game.
@dev docs/protocol.md §4 is the specification, with the reasoning for each parameter.
     Failed checks revert without a message and carry a `# dev:` reason: revert strings
     would cost ~10 KB of bytecode here, over the EIP-170 limit. Venom merges revert paths,
     so the tests check each reason on a debug build without experimental-codegen.
     Payouts are pull-based (`withdraw`); `liabilities()` always equals the balance.
"""

from interfaces import IExecutor
import merkle
import commitments
import descriptor

# ---------------------------------------------------------------- parameters

# @dev Most checkpoint intervals per commitment (N / k): the run tree then has up to 65,537
#      leaves and an interval root's inclusion proof up to 17 hashes.
MAX_CHECKPOINTS: constant(uint256) = 65536
# @dev Leaves of the run tree per commit_run transaction (docs/protocol.md §3.3): part p
#      holds leaves p * COMMIT_PART .. (p + 1) * COMMIT_PART - 1 (leaf i = C_i; C_0 is the
#      spec's), so every part but the last is a complete, aligned subtree. 2,048 roots are
#      64 KiB of calldata, half of a node's usual 128 KiB transaction size limit.
#      Mirrored in protocol/constants.py.
COMMIT_PART: public(constant(uint256)) = 2048
# @dev Most parts of one commitment: ceil((MAX_CHECKPOINTS + 1) / COMMIT_PART).
MAX_PARTS: constant(uint256) = (MAX_CHECKPOINTS + COMMIT_PART) // COMMIT_PART
# @dev Values the trainer reveals per trace bisection move: the interval is cut in
#      TRACE_ARITY parts (TRACE_ARITY - 1 roots). 8 minimises total gas (bench/gas_game.py).
TRACE_ARITY: public(constant(uint256)) = 8
# @dev Parts per partial-value bisection move. 8 keeps a pick under 60k gas (16 cost 68.8k)
#      and needs the same 2 rounds for the 64-term sums of digits-mlp.
PARTIAL_ARITY: public(constant(uint256)) = 8
# @dev Share of a slashed stake paid to the challenger who proved the fault (basis points);
#      the rest is burned, so a trainer challenging itself always loses money.
WINNER_SHARE_BPS: constant(uint256) = 5000
# @dev Share of a losing challenger's bond that is burned (basis points); the rest goes to
#      the trainer, so a trainer's sock-puppet challenge never pays either.
BOND_BURN_BPS: constant(uint256) = 2500
BPS: constant(uint256) = 10000

# @dev Job parameter bounds (docs/protocol.md §4.5), enforced by register_job; the Python
#      mirror is protocol/game.py (a test compares it with the deployed values).
#      MIN_CLOCK: an honest party's chess clock must cover every move of one game at one
#      transaction per block while other games share its time (§4.3): 1 h.
MIN_CLOCK: public(constant(uint64)) = 3600
# @dev MIN_WINDOW: time for watchers to fetch, replay sampled intervals and open disputes.
MIN_WINDOW: public(constant(uint64)) = 3600
# @dev MAX_DURATION: the longest clock, window and train time (365 days); with it no
#      accepted_at + train_time or committed_at + window overflows uint64, and clocks fit
#      the 48-bit fields of a game's turn word.
MAX_DURATION: public(constant(uint64)) = 31536000
# @dev MIN_BOND: a losing challenger pays the honest trainer's gas for a whole dispute
#      (<= 1.2M gas on digits-mlp, bench/gas_game.py) with 75 % of it, and burns >= 1 wei.
MIN_BOND: public(constant(uint256)) = 10000000000000000
# @dev MIN_STAKE: the winner's share of a slashed stake covers at least one bond.
MIN_STAKE: public(constant(uint256)) = 20000000000000000
# @dev Most ops per step and positions per interval (the 32-bit op and 64-bit position
#      fields of a game).
MAX_PROGRAM_LEN: constant(uint256) = 4294967295
MAX_SPAN: constant(uint256) = 18446744073709551615
# @dev MTH({}) = sha256(""): the only data root of a tensor with no elements.
EMPTY_DATA_ROOT: constant(bytes32) = 0xe3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
# @dev Virtual time (§4.3) counts seconds in units of 2^-16.
_VSHIFT: constant(uint256) = 16
_M56: constant(uint256) = 72057594037927935
_M48: constant(uint256) = 281474976710655
_M96: constant(uint256) = 79228162514264337593543950335

# job status
OPEN: constant(uint8) = 1
ACCEPTED: constant(uint8) = 2
COMMITTED: constant(uint8) = 3
FINALIZED: constant(uint8) = 4
REJECTED: constant(uint8) = 5
CANCELLED: constant(uint8) = 6
EXPIRED: constant(uint8) = 7

# game phases; the trainer moves in TRACE_REVEAL, OPEN_OP, CHUNK_REVEAL, CHUNK_OPEN and
# PARTIAL_REVEAL, the challenger in the others
TRACE_REVEAL: constant(uint8) = 1
TRACE_PICK: constant(uint8) = 2
OPEN_OP: constant(uint8) = 3
CHUNK_REVEAL: constant(uint8) = 4
CHUNK_PICK: constant(uint8) = 5
CHUNK_OPEN: constant(uint8) = 6
ELEMENT_PICK: constant(uint8) = 7
PARTIAL_REVEAL: constant(uint8) = 8
PARTIAL_PICK: constant(uint8) = 9
ONE_STEP: constant(uint8) = 10
TRAINER_WON: constant(uint8) = 11
CHALLENGER_WON: constant(uint8) = 12
ABANDONED: constant(uint8) = 13  # the job was rejected by another game: bond refunded

# @dev Storage words start non-zero so that no move pays for a zero-to-non-zero write.
_UNSET: constant(bytes32) = 0x0000000000000000000000000000000000000000000000000000000000000001
_M64: constant(uint256) = 18446744073709551615
_M32: constant(uint256) = 4294967295
# @dev Partial values are stored as bits | _TAG so that the word is never zero (+0.0 is a
#      common accumulator), and rewriting it never pays for a zero-to-non-zero store.
_TAG: constant(uint256) = 4294967296

ELEMENTS_PER_CHUNK: constant(uint256) = 256

# ---------------------------------------------------------------- types


struct JobSpec:
    program_root: bytes32  # MTH of the step program's op descriptors
    program_len: uint64  # L, ops per step
    dataset_root: bytes32  # MTH over steps of (x_root || y_root)
    initial_root: bytes32  # C_0, the state root before step 0
    bundle: bytes32  # sha256 of the job bundle's manifest (docs/protocol.md §5.4)
    steps: uint64  # N
    every: uint64  # k, steps per checkpoint interval (divides N)
    slots: uint64  # S, slots in the state tree
    stake: uint256  # the trainer's stake, in wei
    bond: uint256  # each challenger's bond, in wei
    clock: uint64  # seconds on each party's chess clock, per game
    window: uint64  # seconds after the commitment during which disputes may open
    train_time: uint64  # seconds after acceptance by which the trainer must commit


struct Job:
    spec: JobSpec
    job_hash: bytes32
    requester: address
    trainer: address
    reward: uint256
    status: uint8
    accepted_at: uint64
    committed_at: uint64
    run_root: bytes32
    open_games: uint256


struct Game:
    # Ten storage slots; a move reads and writes only the few it needs. Packed words:
    #   who    = challenger (160 bits) << 96 | job_id (96)
    #   turn   = phase (8) << 248 | seq (32) << 216 | trainer clock (48) << 168
    #            | challenger clock (48) << 120 | last move timestamp (64) << 56
    #            | job virtual time at the last move (56)
    #   bounds = interval (64) << 192 | lo (64) << 128 | hi (64) << 64 | element (64)
    #   opened = step (64) << 192 | op (32) << 160 | numel (32) << 128
    #            | node_lo (64) << 64 | node_hi (64)
    who: uint256
    turn: uint256
    bounds: uint256
    v_lo: bytes32  # agreed value at lo (a state root, or float32 bits in the partials)
    v_hi: bytes32  # disputed value at hi
    pending: bytes32  # sha256 of the values revealed by the last reveal
    opened: uint256
    pre_root: bytes32  # the opened op's agreed pre-state root
    desc_hash: bytes32  # sha256 of the opened op's descriptor
    node: bytes32  # current node of the output tensor's chunk tree


struct Turn:
    phase: uint8
    seq: uint256  # moves so far; every move names it (reorg and front-run protection)
    trainer_clock: uint256  # seconds left
    challenger_clock: uint256
    last_move: uint256  # timestamp
    vstart: uint256  # the job's virtual time at the last move (units of 2^-16 s)


struct GameView:
    job_id: uint256
    challenger: address
    phase: uint8
    seq: uint256
    interval: uint256
    lo: uint256
    hi: uint256
    v_lo: bytes32
    v_hi: bytes32
    pending: bytes32
    step: uint256
    op: uint256
    pre_root: bytes32
    desc_hash: bytes32
    numel: uint256
    node: bytes32
    node_lo: uint256
    node_hi: uint256
    element: uint256
    trainer_clock: uint256
    challenger_clock: uint256
    last_move: uint256
    settled: bool
    deadline: uint256  # the last second the party on turn may move (at today's open games)
    live: bool  # running, and not frozen by a lower-numbered game that rejected the job


struct OperandWitness:
    slot_value: bytes32  # the operand slot's tensor_root in the pre-state
    slot_proof: DynArray[bytes32, merkle.MAX_DEPTH]  # ... proven against the pre-state root
    numel: uint64  # the tensor_root's fields
    data_root: bytes32
    chunk: Bytes[commitments.CHUNK_BYTES]  # the chunk holding the element read
    chunk_proof: DynArray[bytes32, merkle.MAX_DEPTH]


# ---------------------------------------------------------------- events


event JobRegistered:
    job_id: indexed(uint256)
    job_hash: indexed(bytes32)
    requester: indexed(address)
    spec: JobSpec
    reward: uint256


event JobAccepted:
    job_id: indexed(uint256)
    trainer: indexed(address)
    stake: uint256
    commit_deadline: uint256


event CheckpointRoots:
    job_id: indexed(uint256)
    part: uint256
    roots: DynArray[bytes32, COMMIT_PART]  # the part's checkpoint roots, in order


event RunCommitted:
    job_id: indexed(uint256)
    trainer: indexed(address)
    run_root: bytes32
    challenge_deadline: uint256


event JobClosed:
    job_id: indexed(uint256)
    status: uint8


event DisputeOpened:
    game_id: indexed(uint256)
    job_id: indexed(uint256)
    challenger: indexed(address)
    interval: uint256
    bond: uint256


event Moved:
    game_id: indexed(uint256)
    seq: uint256
    phase: uint8  # the phase the game is in after this move
    lo: uint256
    hi: uint256
    values: DynArray[bytes32, 16]  # revealed roots / partials / children, when any


event ChunkOpened:
    game_id: indexed(uint256)
    seq: uint256
    chunk_index: uint256
    chunk: Bytes[commitments.CHUNK_BYTES]


event GameResolved:
    game_id: indexed(uint256)
    job_id: indexed(uint256)
    trainer_won: bool
    reason: String[32]


event Credited:
    account: indexed(address)
    amount: uint256
    reason: String[32]


event Withdrawn:
    account: indexed(address)
    amount: uint256


# ---------------------------------------------------------------- storage

# @notice The executor that computes one-step verdicts.
EXECUTOR: public(immutable(IExecutor))

# @notice Jobs by id (ids start at 1).
jobs: public(HashMap[uint256, Job])
# @notice Number of jobs registered.
job_count: public(uint256)
# @notice Games by id (ids start at 1), packed; `game(id)` unpacks.
games: public(HashMap[uint256, Game])
# @notice Whether a finished game's stakes and bonds have been paid out (`settle`).
settled: public(HashMap[uint256, bool])
# @notice Number of games opened.
game_count: public(uint256)
# @notice Wei each account may withdraw.
credits: public(HashMap[address, uint256])
# @notice Wei locked forever by slashing.
burned: public(uint256)
# @notice Wei held for jobs (rewards, stakes), games (bonds) and credits: with `burned`,
#         always exactly this contract's balance.
held: public(uint256)
# @notice Per job, how many parts of its commitment `commit_run` has taken.
committed_parts: public(HashMap[uint256, uint256])
# @notice Per job and part but the last, the root of the part's subtree of the run tree.
part_roots: public(HashMap[uint256, HashMap[uint256, bytes32]])
# @notice Per job, the games' shared clock (docs/protocol.md §4.3), packed:
#         winner game (64) << 192 | running games (32) << 160 | last update (64) << 96
#         | virtual time (96, units of 2^-16 s). The winner is the lowest game id the
#         challenger won (0: none yet); games above it are frozen, games below it still run.
job_clock: public(HashMap[uint256, uint256])


@deploy
def __init__(executor: IExecutor):
    """
    @notice Deploy with the one-step executor the games use.
    @param executor The Executor contract.
    """
    EXECUTOR = executor


# ---------------------------------------------------------------- jobs


@external
@payable
def register_job(spec: JobSpec) -> uint256:
    """
    @notice Register a training job, escrowing `msg.value` as its reward.
    @dev The job hash binds every field of the spec, the reward and the requester. Every
         parameter is bounded (MIN_/MAX_ constants, docs/protocol.md §4.5): no deadline
         can overflow, no clock is too short for an honest party, no bond is free.
    @param spec The job's commitments and parameters.
    @return The job id.
    """
    assert spec.steps > 0 and spec.every > 0  # dev: bad steps
    assert spec.steps % spec.every == 0  # dev: k must divide N
    assert convert(spec.steps // spec.every, uint256) <= MAX_CHECKPOINTS  # dev: too many checkpoints
    assert spec.program_len > 0 and spec.slots > 0  # dev: empty program
    assert spec.bundle != empty(bytes32)  # dev: no bundle
    assert convert(spec.program_len, uint256) <= MAX_PROGRAM_LEN  # dev: program too long
    assert convert(spec.every, uint256) * convert(spec.program_len, uint256) <= MAX_SPAN  # dev: interval too long
    assert spec.clock >= MIN_CLOCK and spec.clock <= MAX_DURATION  # dev: bad clock
    assert spec.window >= MIN_WINDOW and spec.window <= MAX_DURATION  # dev: bad window
    assert spec.train_time > 0 and spec.train_time <= MAX_DURATION  # dev: bad train time
    assert spec.bond >= MIN_BOND  # dev: bond too small
    assert spec.stake >= MIN_STAKE  # dev: stake too small
    job_id: uint256 = self.job_count + 1
    self.job_count = job_id
    job_hash: bytes32 = sha256(abi_encode(spec, msg.value, msg.sender))
    self.jobs[job_id] = Job(
        spec=spec,
        job_hash=job_hash,
        requester=msg.sender,
        trainer=empty(address),
        reward=msg.value,
        status=OPEN,
        accepted_at=0,
        committed_at=0,
        run_root=empty(bytes32),
        open_games=0,
    )
    self.held += msg.value
    log JobRegistered(job_id=job_id, job_hash=job_hash, requester=msg.sender, spec=spec, reward=msg.value)
    return job_id


@external
@payable
def accept_job(job_id: uint256, job_hash: bytes32):
    """
    @notice Become the job's trainer by staking exactly the required stake.
    @dev `job_hash` binds what the trainer accepts: after a reorg the same id may name
         another spec, and then the call reverts.
    @param job_id The job.
    @param job_hash The hash of the job the trainer means (JobRegistered's job_hash).
    """
    job: Job = self.jobs[job_id]
    assert job.status == OPEN  # dev: job not open
    assert job.job_hash == job_hash  # dev: wrong job hash
    assert msg.value == job.spec.stake  # dev: wrong stake
    self.jobs[job_id].trainer = msg.sender
    self.jobs[job_id].status = ACCEPTED
    self.jobs[job_id].accepted_at = convert(block.timestamp, uint64)
    self.held += msg.value
    log JobAccepted(job_id=job_id, trainer=msg.sender, stake=msg.value, commit_deadline=block.timestamp + convert(job.spec.train_time, uint256))


@external
def cancel_job(job_id: uint256):
    """
    @notice The requester withdraws a job no trainer has accepted; the reward is credited back.
    @param job_id The job.
    """
    job: Job = self.jobs[job_id]
    assert job.status == OPEN  # dev: job not open
    assert msg.sender == job.requester  # dev: not the requester
    self.jobs[job_id].status = CANCELLED
    self._credit(job.requester, job.reward, "reward refund")
    log JobClosed(job_id=job_id, status=CANCELLED)


@external
def expire_job(job_id: uint256):
    """
    @notice Anyone closes a job whose trainer did not commit in time: the reward goes back
            to the requester, with the stake as compensation.
    @param job_id The job.
    """
    job: Job = self.jobs[job_id]
    assert job.status == ACCEPTED  # dev: not accepted
    assert block.timestamp > convert(job.accepted_at + job.spec.train_time, uint256)  # dev: deadline not passed
    self.jobs[job_id].status = EXPIRED
    self._credit(job.requester, job.reward + job.spec.stake, "expired job")
    log JobClosed(job_id=job_id, status=EXPIRED)


@external
def commit_run(job_id: uint256, part: uint256, roots: DynArray[bytes32, COMMIT_PART]) -> bytes32:
    """
    @notice The trainer commits its run, one part per call, in order: the state roots
            C_k, C_2k, ..., C_N, cut as the run tree's leaves are (COMMIT_PART each; part 0
            omits C_0, which is the spec's).
    @dev The contract hashes each part into its subtree root and, after the last part, the
         part roots into run_root = MTH(C_0, C_k, ..., C_N): the stored root always matches
         the list, which stays recoverable from the CheckpointRoots events (and calldata).
    @param job_id The job.
    @param part p: this call carries C_i for p * COMMIT_PART <= i < (p + 1) * COMMIT_PART.
    @param roots The part's checkpoint roots: COMMIT_PART of them (COMMIT_PART - 1 in part
           0), fewer only in the last part.
    @return The run root after the last part, else empty.
    """
    assert self.jobs[job_id].status == ACCEPTED  # dev: not accepted
    assert msg.sender == self.jobs[job_id].trainer  # dev: not the trainer
    assert block.timestamp <= convert(self.jobs[job_id].accepted_at + self.jobs[job_id].spec.train_time, uint256)  # dev: commit deadline passed
    assert part == self.committed_parts[job_id]  # dev: wrong part
    n: uint256 = convert(self.jobs[job_id].spec.steps // self.jobs[job_id].spec.every, uint256) + 1
    parts: uint256 = (n + COMMIT_PART - 1) // COMMIT_PART
    level: DynArray[bytes32, COMMIT_PART] = []
    if part == 0:
        level.append(merkle._leaf_hash32(self.jobs[job_id].spec.initial_root))
    if part + 1 < parts:
        assert len(level) + len(roots) == COMMIT_PART  # dev: part not full
    else:
        assert len(level) + len(roots) == n - part * COMMIT_PART  # dev: wrong checkpoint count
    for r: bytes32 in roots:
        level.append(merkle._leaf_hash32(r))
    # RFC 9162 root of the part's leaves: pair neighbours bottom-up, in place, promoting an
    # unpaired last node (a complete part is a perfect subtree of the run tree)
    m: uint256 = len(level)
    for _: uint256 in range(11):  # log2(COMMIT_PART) levels
        if m == 1:
            break
        for i: uint256 in range(m // 2, bound=COMMIT_PART // 2):
            level[i] = merkle._node_hash(level[2 * i], level[2 * i + 1])
        if m % 2 == 1:
            level[m // 2] = level[m - 1]
        m = (m + 1) // 2
    self.committed_parts[job_id] = part + 1
    log CheckpointRoots(job_id=job_id, part=part, roots=roots)
    if part + 1 < parts:
        self.part_roots[job_id][part] = level[0]
        return empty(bytes32)
    # every part but the last is an aligned subtree of COMMIT_PART leaves, so the run tree
    # is the RFC 9162 tree over the part roots
    top: DynArray[bytes32, MAX_PARTS] = []
    for p: uint256 in range(part, bound=MAX_PARTS):
        top.append(self.part_roots[job_id][p])
    top.append(level[0])
    for _: uint256 in range(6):  # ceil(log2(MAX_PARTS)) levels
        if parts == 1:
            break
        for i: uint256 in range(parts // 2, bound=MAX_PARTS // 2):
            top[i] = merkle._node_hash(top[2 * i], top[2 * i + 1])
        if parts % 2 == 1:
            top[parts // 2] = top[parts - 1]
        parts = (parts + 1) // 2
    run_root: bytes32 = top[0]
    self.jobs[job_id].run_root = run_root
    self.jobs[job_id].status = COMMITTED
    self.jobs[job_id].committed_at = convert(block.timestamp, uint64)
    log RunCommitted(job_id=job_id, trainer=msg.sender, run_root=run_root, challenge_deadline=block.timestamp + convert(self.jobs[job_id].spec.window, uint256))
    return run_root


@external
def finalize(job_id: uint256):
    """
    @notice Anyone finalises a commitment whose window has passed with no open dispute:
            the trainer is credited its stake and the reward.
    @param job_id The job.
    """
    job: Job = self.jobs[job_id]
    assert job.status == COMMITTED  # dev: not committed
    assert block.timestamp > convert(job.committed_at + job.spec.window, uint256)  # dev: window open
    assert job.open_games == 0  # dev: dispute open
    self.jobs[job_id].status = FINALIZED
    self._credit(job.trainer, job.reward + job.spec.stake, "reward and stake")
    log JobClosed(job_id=job_id, status=FINALIZED)


@external
@nonreentrant
def withdraw():
    """
    @notice Withdraw everything credited to the caller.
    @dev Checks-effects-interactions and a reentrancy lock; the full gas is forwarded so
         contract wallets can receive.
    """
    amount: uint256 = self.credits[msg.sender]
    assert amount > 0  # dev: nothing to withdraw
    self.credits[msg.sender] = 0
    self.held -= amount
    raw_call(msg.sender, b"", value=amount)
    log Withdrawn(account=msg.sender, amount=amount)


@external
@view
def liabilities() -> uint256:
    """
    @notice Everything this contract owes or has burned; equals its balance at all times.
    @return held + burned, in wei.
    """
    return self.held + self.burned


# ---------------------------------------------------------------- disputes


@external
@payable
def open_dispute(
    job_id: uint256,
    interval: uint256,
    root_lo: bytes32,
    proof_lo: DynArray[bytes32, merkle.MAX_DEPTH],
    root_hi: bytes32,
    proof_hi: DynArray[bytes32, merkle.MAX_DEPTH],
) -> uint256:
    """
    @notice Dispute checkpoint interval `interval`: the caller agrees with C_c and says
            C_{c+1} is not what k steps from C_c give. Posts the job's bond.
    @param job_id The job.
    @param interval c, 0 <= c < N/k.
    @param root_lo C_c, as committed.
    @param proof_lo Its inclusion proof in the run tree (leaf c of N/k + 1).
    @param root_hi C_{c+1}, as committed.
    @param proof_hi Its inclusion proof (leaf c + 1).
    @return The game id.
    """
    job: Job = self.jobs[job_id]
    assert job.status == COMMITTED  # dev: not committed
    assert block.timestamp <= convert(job.committed_at + job.spec.window, uint256)  # dev: window closed
    assert msg.value == job.spec.bond  # dev: wrong bond
    n_roots: uint256 = convert(job.spec.steps // job.spec.every, uint256) + 1
    assert interval + 1 < n_roots  # dev: no such interval
    assert merkle._verify(job.run_root, merkle._leaf_hash32(root_lo), interval, n_roots, proof_lo)  # dev: bad proof of C_c
    assert merkle._verify(job.run_root, merkle._leaf_hash32(root_hi), interval + 1, n_roots, proof_hi)  # dev: bad proof of C_c+1
    game_id: uint256 = self.game_count + 1
    self.game_count = game_id
    span: uint256 = convert(job.spec.every, uint256) * convert(job.spec.program_len, uint256)
    clock: uint256 = convert(job.spec.clock, uint256)
    cw: uint256 = self.job_clock[job_id]
    v: uint256 = self._vnow(cw)
    self._set_clock(job_id, 0, ((cw >> 160) & _M32) + 1, v)
    turn: Turn = Turn(
        phase=TRACE_REVEAL if span > 1 else OPEN_OP,
        seq=0,
        trainer_clock=clock,
        challenger_clock=clock,
        last_move=block.timestamp,
        vstart=v,
    )
    self.games[game_id] = Game(
        who=(convert(msg.sender, uint256) << 96) | job_id,
        turn=self._pack(turn),
        bounds=self._bounds(interval, 0, span, 0),
        v_lo=root_lo,
        v_hi=root_hi,
        pending=_UNSET,
        opened=1,
        pre_root=_UNSET,
        desc_hash=_UNSET,
        node=_UNSET,
    )
    self.jobs[job_id].open_games = job.open_games + 1
    self.held += msg.value
    log DisputeOpened(game_id=game_id, job_id=job_id, challenger=msg.sender, interval=interval, bond=msg.value)
    return game_id


@external
def reveal(game_id: uint256, seq: uint256, values: DynArray[bytes32, 16]):
    """
    @notice Trainer: reveal the values inside the current bisection range — the op-level
            state roots (trace) or the partial values (partial) at the cut points.
    @dev With n = min(ARITY, hi - lo) parts, the cut points are lo + (hi - lo) * i // n for
         i = 1 .. n - 1; exactly n - 1 values. Partial values are float32 bit patterns.
    @param game_id The game.
    @param seq The game's move count this move answers.
    @param values The trainer's values at the cut points, in order.
    """
    t: Turn = self._begin(game_id, seq, True)
    arity: uint256 = TRACE_ARITY
    if t.phase == PARTIAL_REVEAL:
        arity = PARTIAL_ARITY
        for v: bytes32 in values:
            assert convert(v, uint256) < 2**32  # dev: partial not float32
    else:
        assert t.phase == TRACE_REVEAL  # dev: wrong phase
    bounds: uint256 = self.games[game_id].bounds
    lo: uint256 = (bounds >> 128) & _M64
    hi: uint256 = (bounds >> 64) & _M64
    assert len(values) == min(arity, hi - lo) - 1  # dev: wrong number of values
    self.games[game_id].pending = sha256(abi_encode(values))
    self._end(game_id, t, t.phase + 1)  # TRACE_PICK / PARTIAL_PICK
    log Moved(game_id=game_id, seq=seq, phase=t.phase + 1, lo=lo, hi=hi, values=values)


@external
def pick(game_id: uint256, seq: uint256, values: DynArray[bytes32, 16], part: uint256):
    """
    @notice Challenger: choose the part of the last reveal whose start it agrees with and
            whose end it disputes.
    @param game_id The game.
    @param seq The game's move count this move answers.
    @param values The values the trainer revealed (checked against their hash).
    @param part The part, 0 .. n - 1 (part i runs from cut point i to cut point i + 1).
    """
    t: Turn = self._begin(game_id, seq, False)
    assert t.phase == TRACE_PICK or t.phase == PARTIAL_PICK  # dev: wrong phase
    assert sha256(abi_encode(values)) == self.games[game_id].pending  # dev: values differ from the reveal
    n: uint256 = len(values) + 1
    assert part < n  # dev: no such part
    bounds: uint256 = self.games[game_id].bounds
    lo: uint256 = (bounds >> 128) & _M64
    span: uint256 = ((bounds >> 64) & _M64) - lo
    hi: uint256 = lo + span * (part + 1) // n
    lo = lo + span * part // n
    tag: uint256 = _TAG if t.phase == PARTIAL_PICK else 0
    if part > 0:
        self.games[game_id].v_lo = convert(convert(values[part - 1], uint256) | tag, bytes32)
    if part + 1 < n:
        self.games[game_id].v_hi = convert(convert(values[part], uint256) | tag, bytes32)
    self.games[game_id].bounds = self._bounds(bounds >> 192, lo, hi, bounds & _M64)
    phase: uint8 = t.phase - 1  # back to the reveal phase
    if hi - lo == 1:
        phase = OPEN_OP if t.phase == TRACE_PICK else ONE_STEP
    self._end(game_id, t, phase)
    log Moved(game_id=game_id, seq=seq, phase=phase, lo=lo, hi=hi, values=[])


@external
def open_op(
    game_id: uint256,
    seq: uint256,
    desc: Bytes[descriptor.DESCRIPTOR_BYTES],
    desc_proof: DynArray[bytes32, merkle.MAX_DEPTH],
    old_value: bytes32,
    new_value: bytes32,
    slot_proof: DynArray[bytes32, merkle.MAX_DEPTH],
    numel: uint64,
    data_root: bytes32,
    batch_leaf: Bytes[64],
    batch_proof: DynArray[bytes32, merkle.MAX_DEPTH],
):
    """
    @notice Trainer: open the disputed op. Shows its descriptor (proven in the program) and
            that the post-state is the pre-state with only the output slot replaced (one
            Merkle path for both). LOAD_BATCH (with the step's dataset leaf) and FREE are
            decided here; for any other op the new tensor_root's fields start the chunk
            descent.
    @param game_id The game.
    @param seq The game's move count this move answers.
    @param desc The op's 128-byte descriptor.
    @param desc_proof Its inclusion proof in the program tree (leaf j of L).
    @param old_value The output slot's value in the pre-state.
    @param new_value Its value in the post-state.
    @param slot_proof The slot's path in the state tree, valid for both states.
    @param numel The new value's element count (tensor ops; else 0).
    @param data_root The new value's data root (tensor ops; else zero).
    @param batch_leaf LOAD_BATCH: the step's dataset leaf x_root || y_root (else empty).
    @param batch_proof LOAD_BATCH: its proof in the dataset tree (leaf t of N).
    """
    t: Turn = self._begin(game_id, seq, True)
    assert t.phase == OPEN_OP  # dev: wrong phase
    spec: JobSpec = self.jobs[self.games[game_id].who & _M64].spec
    bounds: uint256 = self.games[game_id].bounds
    position: uint256 = (bounds >> 128) & _M64
    L: uint256 = convert(spec.program_len, uint256)
    j: uint256 = position % L
    step: uint256 = (bounds >> 192) * convert(spec.every, uint256) + position // L
    v_lo: bytes32 = self.games[game_id].v_lo
    assert merkle._verify(spec.program_root, merkle._leaf_hash(desc), j, L, desc_proof)  # dev: bad descriptor proof
    out: uint256 = descriptor._out_slot(desc)
    S: uint256 = convert(spec.slots, uint256)
    assert merkle._root_from_path(merkle._leaf_hash32(old_value), out, S, slot_proof) == v_lo  # dev: pre-state mismatch
    assert merkle._root_from_path(merkle._leaf_hash32(new_value), out, S, slot_proof) == self.games[game_id].v_hi  # dev: post-state mismatch
    op: uint256 = descriptor._opcode(desc)
    if op == descriptor.LOAD_BATCH:
        assert merkle._verify(spec.dataset_root, merkle._leaf_hash(batch_leaf), step, convert(spec.steps, uint256), batch_proof)  # dev: bad dataset proof
        assert new_value == extract32(batch_leaf, 32 * descriptor._imm(desc))  # dev: wrong batch
        self._resolve(game_id, t, True, "load_batch correct")
        return
    if op == descriptor.FREE:
        assert new_value == empty(bytes32)  # dev: free left a value
        self._resolve(game_id, t, True, "free correct")
        return
    assert numel == convert(descriptor._numel(desc), uint64)  # dev: wrong numel
    assert commitments._tensor_root(commitments.DTYPE_FLOAT32, numel, data_root) == new_value  # dev: tensor fields mismatch
    chunks: uint256 = commitments._chunk_count(numel)
    if chunks == 0:
        # no element to bisect: the only tensor of numel 0 has data root MTH({}); any other
        # root hides data in the state and loses here (docs/protocol.md §4.2)
        self._resolve(game_id, t, data_root == EMPTY_DATA_ROOT, "empty output")
        return
    self.games[game_id].opened = self._opened(step, j, convert(numel, uint256), 0, chunks)
    self.games[game_id].pre_root = v_lo
    self.games[game_id].desc_hash = sha256(desc)
    self.games[game_id].node = data_root
    phase: uint8 = CHUNK_OPEN if chunks == 1 else CHUNK_REVEAL
    self._end(game_id, t, phase)
    log Moved(game_id=game_id, seq=seq, phase=phase, lo=0, hi=chunks, values=[old_value, new_value])


@external
def reveal_children(game_id: uint256, seq: uint256, left: bytes32, right: bytes32):
    """
    @notice Trainer: reveal the two children of the current chunk-tree node.
    @param game_id The game.
    @param seq The game's move count this move answers.
    @param left The left child hash.
    @param right The right child hash.
    """
    t: Turn = self._begin(game_id, seq, True)
    assert t.phase == CHUNK_REVEAL  # dev: wrong phase
    assert merkle._node_hash(left, right) == self.games[game_id].node  # dev: children mismatch
    self._end(game_id, t, CHUNK_PICK)
    opened: uint256 = self.games[game_id].opened
    log Moved(game_id=game_id, seq=seq, phase=CHUNK_PICK, lo=(opened >> 64) & _M64, hi=opened & _M64, values=[left, right])


@external
def pick_child(game_id: uint256, seq: uint256, left: bytes32, right: bytes32, go_right: bool):
    """
    @notice Challenger: descend into the child it disputes.
    @param game_id The game.
    @param seq The game's move count this move answers.
    @param left The revealed left child.
    @param right The revealed right child.
    @param go_right True for the right child, False for the left.
    """
    t: Turn = self._begin(game_id, seq, False)
    assert t.phase == CHUNK_PICK  # dev: wrong phase
    assert merkle._node_hash(left, right) == self.games[game_id].node  # dev: children mismatch
    opened: uint256 = self.games[game_id].opened
    lo: uint256 = (opened >> 64) & _M64
    hi: uint256 = opened & _M64
    split: uint256 = lo + merkle._split_point(hi - lo)
    if go_right:
        self.games[game_id].node = right
        lo = split
    else:
        self.games[game_id].node = left
        hi = split
    self.games[game_id].opened = ((opened >> 128) << 128) | (lo << 64) | hi
    phase: uint8 = CHUNK_OPEN if hi - lo == 1 else CHUNK_REVEAL
    self._end(game_id, t, phase)
    log Moved(game_id=game_id, seq=seq, phase=phase, lo=lo, hi=hi, values=[])


@external
def open_chunk(game_id: uint256, seq: uint256, chunk: Bytes[commitments.CHUNK_BYTES]):
    """
    @notice Trainer: reveal the disputed chunk's bytes (checked against its leaf hash).
    @param game_id The game.
    @param seq The game's move count this move answers.
    @param chunk The CHUNK_BYTES bytes of the chunk.
    """
    t: Turn = self._begin(game_id, seq, True)
    assert t.phase == CHUNK_OPEN  # dev: wrong phase
    assert len(chunk) == commitments.CHUNK_BYTES and merkle._leaf_hash(chunk) == self.games[game_id].node  # dev: chunk mismatch
    self._end(game_id, t, ELEMENT_PICK)
    log ChunkOpened(game_id=game_id, seq=seq, chunk_index=(self.games[game_id].opened >> 64) & _M64, chunk=chunk)


@external
def pick_element(
    game_id: uint256,
    seq: uint256,
    chunk: Bytes[commitments.CHUNK_BYTES],
    index: uint256,
    desc: Bytes[descriptor.DESCRIPTOR_BYTES],
):
    """
    @notice Challenger: name the element of the opened chunk it disputes. Padding past
            numel must be zero; a FILL element or an empty reduction is decided here; an
            element op goes to the one-step, a reduction to the partial bisection.
    @param game_id The game.
    @param seq The game's move count this move answers.
    @param chunk The opened chunk (checked against its leaf hash).
    @param index The element within the chunk, 0 .. 255.
    @param desc The opened op's descriptor (checked against its hash).
    """
    t: Turn = self._begin(game_id, seq, False)
    assert t.phase == ELEMENT_PICK  # dev: wrong phase
    assert merkle._leaf_hash(chunk) == self.games[game_id].node  # dev: chunk mismatch
    assert sha256(desc) == self.games[game_id].desc_hash  # dev: descriptor differs
    assert index < ELEMENTS_PER_CHUNK  # dev: no such element
    opened: uint256 = self.games[game_id].opened
    f: uint256 = ((opened >> 64) & _M64) * ELEMENTS_PER_CHUNK + index
    claimed: uint256 = self._element_at(chunk, index)
    interval: uint256 = self.games[game_id].bounds >> 192
    if f >= (opened >> 128) & _M32:
        # zero padding past the last element is part of the commitment
        self._resolve(game_id, t, claimed == 0, "padding")
        return
    op: uint256 = descriptor._opcode(desc)
    if op == descriptor.FILL:
        self._resolve(game_id, t, claimed == descriptor._imm(desc), "fill")
        return
    hi: uint256 = 1
    phase: uint8 = ONE_STEP
    if self._is_reduction(op):
        hi = descriptor._reduce_len(desc)
        acc0: uint256 = convert(staticcall EXECUTOR.initial_acc(desc), uint256)
        if hi == 0:
            self._resolve(game_id, t, claimed == acc0, "empty reduction")
            return
        self.games[game_id].v_lo = convert(acc0 | _TAG, bytes32)
        if hi > 1:
            phase = PARTIAL_REVEAL
    self.games[game_id].bounds = self._bounds(interval, 0, hi, f)
    self.games[game_id].v_hi = convert(claimed | _TAG, bytes32)
    self._end(game_id, t, phase)
    log Moved(game_id=game_id, seq=seq, phase=phase, lo=0, hi=hi, values=[convert(f, bytes32), convert(claimed, bytes32)])


@external
def one_step(
    game_id: uint256,
    seq: uint256,
    desc: Bytes[descriptor.DESCRIPTOR_BYTES],
    operands: DynArray[OperandWitness, 3],
):
    """
    @notice The verdict: prove the operand elements against the agreed pre-state, let the
            executor compute the element (or the partial step acc_lo -> acc_lo+1), compare
            with the trainer's claim. Anyone may send it; the loser is whoever was wrong.
    @param game_id The game.
    @param seq The game's move count this move answers.
    @param desc The opened op's descriptor (checked against its hash).
    @param operands One witness per operand the op reads, in operand order.
    """
    t: Turn = self._begin_any(game_id, seq)
    assert t.phase == ONE_STEP  # dev: wrong phase
    assert sha256(desc) == self.games[game_id].desc_hash  # dev: descriptor differs
    slots: uint256 = convert(self.jobs[self.games[game_id].who & _M64].spec.slots, uint256)
    bounds: uint256 = self.games[game_id].bounds
    f: uint256 = bounds & _M64
    op: uint256 = descriptor._opcode(desc)
    is_reduction: bool = self._is_reduction(op)
    r: uint256 = (bounds >> 128) & _M64 if is_reduction else 0
    pre_root: bytes32 = self.games[game_id].pre_root
    x: uint32[3] = empty(uint32[3])
    a: uint256 = 0
    for w: OperandWitness in operands:
        if a == 1 and op == descriptor.GATHER:
            # the table element is read at the row the proven index selects
            r = staticcall EXECUTOR.gather_row(desc, x[0])
            assert r != 0  # dev: index selects no row
            r -= 1
        x[a] = self._operand_element(pre_root, slots, desc, a, f, r, w)
        a += 1
    if op == descriptor.GATHER and a == 1:
        assert staticcall EXECUTOR.gather_row(desc, x[0]) == 0  # dev: index selects a row
    else:
        assert a == self._arity(op)  # dev: wrong operand count
    computed: uint32 = 0
    if is_reduction:
        computed = staticcall EXECUTOR.partial_step(desc, f, convert(convert(self.games[game_id].v_lo, uint256) & _M32, uint32), x[0], x[1])
    else:
        computed = staticcall EXECUTOR.element(desc, x[0], x[1], x[2])
    self._resolve(game_id, t, convert(computed, uint256) == convert(self.games[game_id].v_hi, uint256) & _M32, "one-step")


@external
def timeout(game_id: uint256):
    """
    @notice Anyone: end a game whose party on turn has run out of clock; that party loses.
    @dev The trainer's clock runs on the job's virtual time (§4.3), the challenger's on
         block time; `game(id).deadline` is the last second the party on turn may move.
    @param game_id The game.
    """
    t: Turn = self._unpack(self.games[game_id].turn)
    assert t.phase != 0 and t.phase < TRAINER_WON  # dev: game not running
    cw: uint256 = self.job_clock[self.games[game_id].who & _M64]
    assert cw >> 192 == 0 or game_id < cw >> 192  # dev: job not committed
    if self._trainer_to_move(t.phase):
        assert self._vnow(cw) - t.vstart > t.trainer_clock << _VSHIFT  # dev: trainer has time
        self._resolve(game_id, t, False, "trainer timeout")
    else:
        assert block.timestamp - t.last_move > t.challenger_clock  # dev: challenger has time
        self._resolve(game_id, t, True, "challenger timeout")


@external
def abandon(game_id: uint256):
    """
    @notice Anyone: close a running game opened after the game that rejected the job (the
            lowest-numbered game a challenger won); its challenger gets its bond back at
            `settle`. Games opened before it keep running (docs/protocol.md §4.4).
    @param game_id The game.
    """
    t: Turn = self._unpack(self.games[game_id].turn)
    assert t.phase != 0 and t.phase < TRAINER_WON  # dev: game not running
    job_id: uint256 = self.games[game_id].who & _M64
    cw: uint256 = self.job_clock[job_id]
    winner: uint256 = cw >> 192
    assert winner != 0  # dev: job not rejected
    assert game_id > winner  # dev: game still live
    self._end(game_id, t, ABANDONED)
    self.jobs[job_id].open_games -= 1
    self._set_clock(job_id, winner, ((cw >> 160) & _M32) - 1, self._vnow(cw))
    log GameResolved(game_id=game_id, job_id=job_id, trainer_won=False, reason="abandoned")


@external
def settle(game_id: uint256):
    """
    @notice Anyone: pay out a finished game, once. Trainer won: the bond goes to the
            trainer, BOND_BURN_BPS of it burned. Challenger won: the lowest-numbered such
            game (the job's winner) gets its bond back plus WINNER_SHARE_BPS of the stake,
            the rest of the stake is burned and the reward goes back to the requester, once
            no game of the job runs any more; any other won game gets its bond back.
            Abandoned: bond back.
    @param game_id The game.
    """
    phase: uint8 = self._unpack(self.games[game_id].turn).phase
    assert phase >= TRAINER_WON  # dev: game not over
    assert not self.settled[game_id]  # dev: already settled
    self.settled[game_id] = True
    who: uint256 = self.games[game_id].who
    challenger: address = convert(who >> 96, address)
    job: Job = self.jobs[who & _M64]
    bond: uint256 = job.spec.bond
    if phase == TRAINER_WON:
        burn: uint256 = bond * BOND_BURN_BPS // BPS
        self._burn(burn)
        self._credit(job.trainer, bond - burn, "challenger bond")
    elif phase == CHALLENGER_WON:
        cw: uint256 = self.job_clock[who & _M64]
        if game_id == cw >> 192:
            assert (cw >> 160) & _M32 == 0  # dev: games still open
            share: uint256 = job.spec.stake * WINNER_SHARE_BPS // BPS
            self._burn(job.spec.stake - share)
            self._credit(challenger, bond + share, "bond and stake share")
            self._credit(job.requester, job.reward, "reward refund")
        else:
            self._credit(challenger, bond, "bond refund")
    else:
        self._credit(challenger, bond, "bond refund")


@external
@view
def game(game_id: uint256) -> GameView:
    """
    @notice A game, unpacked.
    @param game_id The game.
    @return Every field of the game.
    """
    g: Game = self.games[game_id]
    t: Turn = self._unpack(g.turn)
    winner: uint256 = self.job_clock[g.who & _M64] >> 192
    return GameView(
        job_id=g.who & _M64,
        challenger=convert(g.who >> 96, address),
        phase=t.phase,
        seq=t.seq,
        interval=g.bounds >> 192,
        lo=(g.bounds >> 128) & _M64,
        hi=(g.bounds >> 64) & _M64,
        v_lo=g.v_lo,
        v_hi=g.v_hi,
        pending=g.pending,
        step=g.opened >> 192,
        op=(g.opened >> 160) & _M32,
        pre_root=g.pre_root,
        desc_hash=g.desc_hash,
        numel=(g.opened >> 128) & _M32,
        node=g.node,
        node_lo=(g.opened >> 64) & _M64,
        node_hi=g.opened & _M64,
        element=g.bounds & _M64,
        trainer_clock=t.trainer_clock,
        challenger_clock=t.challenger_clock,
        last_move=t.last_move,
        settled=self.settled[game_id],
        deadline=self._deadline(game_id, t),
        live=t.phase != 0 and t.phase < TRAINER_WON and (winner == 0 or game_id < winner),
    )


@external
@view
def to_move(game_id: uint256) -> address:
    """
    @notice Who must move next in a running game (empty address once it is over).
    @param game_id The game.
    @return The trainer or the challenger.
    """
    phase: uint8 = self._unpack(self.games[game_id].turn).phase
    if phase == 0 or phase >= TRAINER_WON:
        return empty(address)
    who: uint256 = self.games[game_id].who
    if self._trainer_to_move(phase):
        return self.jobs[who & _M64].trainer
    return convert(who >> 96, address)


# ---------------------------------------------------------------- internals


@internal
@pure
def _pack(t: Turn) -> uint256:
    return (convert(t.phase, uint256) << 248) | (t.seq << 216) | (t.trainer_clock << 168) | (t.challenger_clock << 120) | (t.last_move << 56) | t.vstart


@internal
@pure
def _unpack(word: uint256) -> Turn:
    return Turn(
        phase=convert(word >> 248, uint8),
        seq=(word >> 216) & _M32,
        trainer_clock=(word >> 168) & _M48,
        challenger_clock=(word >> 120) & _M48,
        last_move=(word >> 56) & _M64,
        vstart=word & _M56,
    )


@internal
@pure
def _bounds(interval: uint256, lo: uint256, hi: uint256, element: uint256) -> uint256:
    return (interval << 192) | (lo << 128) | (hi << 64) | element


@internal
@pure
def _opened(step: uint256, op: uint256, numel: uint256, node_lo: uint256, node_hi: uint256) -> uint256:
    return (step << 192) | (op << 160) | (numel << 128) | (node_lo << 64) | node_hi


@internal
@pure
def _trainer_to_move(phase: uint8) -> bool:
    return phase == TRACE_REVEAL or phase == OPEN_OP or phase == CHUNK_REVEAL or phase == CHUNK_OPEN or phase == PARTIAL_REVEAL


@internal
@pure
def _arity(op: uint256) -> uint256:
    if op == descriptor.SELECT or op == descriptor.FMA:
        return 3
    if op <= descriptor.LDEXP or op == descriptor.MATMUL or op == descriptor.INDEX_ADD or op == descriptor.GATHER:
        return 2
    if op < descriptor.FILL:
        return 1
    return 0


@internal
@pure
def _is_reduction(op: uint256) -> bool:
    """REDUCE_SUM, REDUCE_MAX, MATMUL, INDEX_ADD (0x30..0x33): decided by partials."""
    return op >= descriptor.REDUCE_SUM and op <= descriptor.INDEX_ADD


@internal
@pure
def _element_at(chunk: Bytes[commitments.CHUNK_BYTES], index: uint256) -> uint256:
    """float32 element `index` of a chunk: 4 bytes, little-endian."""
    be: uint256 = convert(slice(chunk, 4 * index, 4), uint256)  # the 4 bytes, big-endian
    return ((be & 255) << 24) | (((be >> 8) & 255) << 16) | (((be >> 16) & 255) << 8) | (be >> 24)


@internal
@pure
def _operand_element(
    pre_root: bytes32,
    slots: uint256,
    desc: Bytes[descriptor.DESCRIPTOR_BYTES],
    a: uint256,
    f: uint256,
    r: uint256,
    w: OperandWitness,
) -> uint32:
    """Operand `a`'s element for output `f`, term `r`, proven against the pre-state."""
    slot: uint256 = descriptor._operand_slot(desc, a)
    assert merkle._verify(pre_root, merkle._leaf_hash32(w.slot_value), slot, slots, w.slot_proof)  # dev: bad operand slot proof
    assert commitments._tensor_root(commitments.DTYPE_FLOAT32, w.numel, w.data_root) == w.slot_value  # dev: operand fields mismatch
    idx: uint256 = descriptor._operand_index(desc, a, f, r)
    assert idx < convert(w.numel, uint256)  # dev: operand index out of range
    assert commitments._check_chunk(w.data_root, w.numel, idx // ELEMENTS_PER_CHUNK, w.chunk, w.chunk_proof)  # dev: bad operand chunk proof
    return convert(self._element_at(w.chunk, idx % ELEMENTS_PER_CHUNK), uint32)


@internal
def _begin(game_id: uint256, seq: uint256, by_trainer: bool) -> Turn:
    """A move by the party on turn: checks it is that party, see `_begin_any`."""
    t: Turn = self._begin_any(game_id, seq)
    assert by_trainer == self._trainer_to_move(t.phase)  # dev: not this party's turn
    who: uint256 = self.games[game_id].who
    if by_trainer:
        assert msg.sender == self.jobs[who & _M64].trainer  # dev: not the trainer
    else:
        assert msg.sender == convert(who >> 96, address)  # dev: not the challenger
    return t


@internal
@view
def _begin_any(game_id: uint256, seq: uint256) -> Turn:
    """Checks the game runs (its job has no winner, or a later one), the move names the
    current move count, and the clock of the party on turn has not run out; returns the
    turn with that clock charged and `seq` advanced. The trainer's clock is charged the
    job's virtual time since its turn began (§4.3), rounded up to whole seconds; the
    challenger's the block time. The caller stores it with the new phase."""
    t: Turn = self._unpack(self.games[game_id].turn)
    assert t.phase != 0 and t.phase < TRAINER_WON  # dev: game not running
    cw: uint256 = self.job_clock[self.games[game_id].who & _M64]
    assert cw >> 192 == 0 or game_id < cw >> 192  # dev: job not committed
    assert seq == t.seq  # dev: stale move
    v: uint256 = self._vnow(cw)
    if self._trainer_to_move(t.phase):
        spent: uint256 = v - t.vstart
        assert spent <= t.trainer_clock << _VSHIFT  # dev: clock expired
        t.trainer_clock -= (spent + (1 << _VSHIFT) - 1) >> _VSHIFT
    else:
        elapsed: uint256 = block.timestamp - t.last_move
        assert elapsed <= t.challenger_clock  # dev: clock expired
        t.challenger_clock -= elapsed
    t.last_move = block.timestamp
    t.vstart = v
    t.seq = seq + 1
    return t


@internal
def _end(game_id: uint256, t: Turn, phase: uint8):
    """Stores the turn after a move, in its new phase."""
    t.phase = phase
    self.games[game_id].turn = self._pack(t)


@internal
def _resolve(game_id: uint256, t: Turn, trainer_won: bool, reason: String[32]):
    """Ends a game with a verdict; a trainer loss rejects the commitment (the first one)
    and makes this game the job's winner if it is the lowest-numbered one the challenger
    won. Payouts: `settle`."""
    job_id: uint256 = self.games[game_id].who & _M64
    self.jobs[job_id].open_games -= 1
    cw: uint256 = self.job_clock[job_id]
    winner: uint256 = cw >> 192
    v: uint256 = self._vnow(cw)
    if trainer_won:
        self._end(game_id, t, TRAINER_WON)
    else:
        self._end(game_id, t, CHALLENGER_WON)
        if winner == 0:
            self.jobs[job_id].status = REJECTED
            log JobClosed(job_id=job_id, status=REJECTED)
        if winner == 0 or game_id < winner:
            winner = game_id
    self._set_clock(job_id, winner, ((cw >> 160) & _M32) - 1, v)
    log GameResolved(game_id=game_id, job_id=job_id, trainer_won=trainer_won, reason=reason)


@internal
def _credit(account: address, amount: uint256, reason: String[32]):
    """Moves `amount` of held wei into `account`'s withdrawable credit (held is unchanged)."""
    if amount == 0:
        return
    self.credits[account] += amount
    log Credited(account=account, amount=amount, reason=reason)


@internal
def _burn(amount: uint256):
    """Moves `amount` of held wei to `burned`, locked forever."""
    self.held -= amount
    self.burned += amount


@internal
@view
def _vnow(cw: uint256) -> uint256:
    """The job's virtual time now (units of 2^-16 s), from its clock word: it advances at
    1 / (running games) per second while no game rejected the job, so n games waiting on
    the trainer share its time; at 1 per second after (a rejected trainer is a proven
    cheater). The trainer's clock in a game is charged this time, not block time."""
    v: uint256 = cw & _M96
    elapsed: uint256 = (block.timestamp - ((cw >> 96) & _M64)) << _VSHIFT
    if cw >> 192 != 0:
        return v + elapsed
    running: uint256 = (cw >> 160) & _M32
    if running == 0:
        return v
    return v + elapsed // running


@internal
def _set_clock(job_id: uint256, winner: uint256, running: uint256, v: uint256):
    """Stores a job's clock word, with virtual time `v` as of now."""
    self.job_clock[job_id] = (winner << 192) | (running << 160) | (block.timestamp << 96) | v


@internal
@view
def _deadline(game_id: uint256, t: Turn) -> uint256:
    """The last second at which the party on turn may still move (0 once the game is over),
    assuming the job's running games stay as they are."""
    if t.phase == 0 or t.phase >= TRAINER_WON:
        return 0
    if not self._trainer_to_move(t.phase):
        return t.last_move + t.challenger_clock
    cw: uint256 = self.job_clock[self.games[game_id].who & _M64]
    at: uint256 = (cw >> 96) & _M64
    budget: uint256 = t.vstart + (t.trainer_clock << _VSHIFT)
    v: uint256 = cw & _M96
    if v > budget:
        return at - 1
    if cw >> 192 != 0:
        return at + ((budget - v) >> _VSHIFT)
    return at + (((budget - v + 1) * ((cw >> 160) & _M32) - 1) >> _VSHIFT)
