"""Secure aggregation (``fl.secagg``): the server learns only the sum of a round's updates (SecAgg+, Bell et al., CCS 2020).

Each client's update is rounded onto a grid the round shares (one step the
server sends, never a scale of the client's own), so that the codes of the
round's clients add up to the codes of their sum; a client sends its codes plus
masks that cancel only in the sum, modulo 2^K with K just large enough to hold
the sum of the round's codes exactly. A round then takes four exchanges with its
clients (each through the same exchange as a plain round, so the Flower grid and
the local simulation carry them alike):

1. **train** (the plain round's request): the client trains, keeps its update
   and two fresh X25519 key pairs, and sends the public keys (and, without
   ``fl.dp``, its update's RMS, from which the server sets the grid step);
2. **shares**: each client gets the public keys of its neighbours (a Harary
   graph of ``fl.secagg_neighbours`` over a random order of the round's clients,
   SecAgg+'s sparse graph), draws its self-mask seed, Shamir-shares that seed and
   its mask key among its neighbours (threshold ``neighbours // 2 + 1``) and sends
   each share encrypted (AES-GCM) under a key agreed with that neighbour;
3. **masked**: each client that shared sends ``codes + PRG(seed) + sum of +-
   PRG(key agreed with each neighbour that shared)`` mod 2^K, packed in K bits;
4. **unmask**: the server forwards the encrypted shares; each client that sent
   its masked vector returns the seed shares of its neighbours that did, and the
   mask-key shares of those that did not. The server rebuilds the seeds and keys,
   removes their masks from the sum, and decodes the round's mean.

No individual update reaches the server: the masked vectors are added as they
arrive, and a mask is removed only from the sum. A client that drops after the
shares (before or after sending its masked vector) is recovered from its
neighbours' shares; a round fails with one line when fewer than the threshold of
a client's neighbours answer. Every byte of the four exchanges is counted in the
round's uplink and downlink. The cryptography is the `cryptography` package's
(X25519, HKDF-SHA256, AES-GCM, AES-CTR as the masks' PRG) and pycryptodome's
Shamir sharing (the primitives Flower's SecAgg+ is built on; ``fedq/`` imports no
Flower module). What this simulation does not defend: a server that lies about
who dropped (SecAgg+'s consistency checks), and clients that send codes off the
grid (no range proofs).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedq.bitpack import pack_bits, unpack_bits
from fedq.comm.codecs import UpdateCodec
from fedq.comm.settings import UplinkConfig
from fedq.errors import ConfigError, FedqError
from fedq.fl.settings import FLConfig, clients_per_round, clients_sampled

SHARES, MASKED, UNMASK = "secagg-shares", "secagg-masked", "secagg-unmask"  # the stages after the train request
KEY_BYTES = 32
SECRET_BYTES = 32  # the self-mask seed and the X25519 mask key: two 16-byte chunks each for Shamir (GF(2^128))
SHARE_BYTES = 4 + SECRET_BYTES  # the holder's index, then its share of each chunk
NONCE_BYTES = 12
CIPHER_BYTES = NONCE_BYTES + 8 + 2 * SHARE_BYTES + 16  # nonce, (from, to), the two shares, GCM tag
MAX_ROUNDINGS = 100  # conditional rounding: draws before a client gives up (each succeeds with probability >= 0.39)
NOISE_TAILS = 10  # distributed DP: the modulus holds the sum's noise out to this many standard deviations
SHARES_INFO, MASK_INFO = b"fedq-secagg-shares", b"fedq-secagg-mask"  # what each agreed key is for


class SecAggError(FedqError):
    """A round that secure aggregation cannot finish (too few of a client's neighbours answered), or a broken message."""


def check_secure_aggregation(fl: FLConfig, plain_mean: bool, uplink: UplinkConfig, codec: UpdateCodec,
                             collusive: bool) -> None:
    """Refuse, with one line before any work, what cannot run when the server sees only the sum of the updates."""
    if fl.dp.distributed and not fl.secagg:
        raise ConfigError("fl.dp.distributed: the clients add the noise, which only secure aggregation keeps from the "
                          "server (each noisy update alone is barely noised): set fl.secagg=true")
    if not fl.secagg:
        return
    if fl.defence != "none" or not plain_mean:
        raise ConfigError(f"fl.secagg: the server sees only the sum of the updates, so it cannot screen, rank or take "
                          f"medians of them (fl.defence={fl.defence}, fl.strategy={fl.strategy}): use fl.defence=none "
                          "with a strategy that averages (fedavg, fedavgm, fedadam, ...)")
    if not codec.shares_a_grid:
        raise ConfigError(f"fl.secagg codes every client's update on the round's shared grid (comm.uplink.bits levels); "
                          f"comm.uplink.name={uplink.name} sends per-client scales, indices or masks that cannot be "
                          "summed masked: use comm.uplink.name=uniform")
    if uplink.entropy_coding or uplink.correlated:
        raise ConfigError("fl.secagg sends every code in the bits the sum needs: comm.uplink.entropy_coding and "
                          "comm.uplink.correlated do not apply to it")
    if collusive:
        raise ConfigError(f"fl.attack={fl.attack} colludes by reading the round's honest updates, which the server "
                          "never sees under fl.secagg")
    if fl.mode == "async" or fl.overselect:
        raise ConfigError("fl.secagg masks a round's updates so that only the whole cohort's sum unmasks: "
                          "fl.mode=async and fl.overselect aggregate whichever clients arrive first")
    if fl.max_update_norm or fl.max_update_norm_ratio:
        raise ConfigError("fl.max_update_norm and fl.max_update_norm_ratio read each update's norm, which the server "
                          "never sees under fl.secagg (use fl.dp.clip: each client clips its own)")
    if fl.dp.target_quantile:
        raise ConfigError("adaptive clipping (fl.dp.target_quantile) counts each client's clipped bit in the clear; "
                          "under fl.secagg use fixed clipping")
    if fl.dp.distributed and not fl.secagg_masks:
        raise ConfigError("fl.dp.distributed hides each client's noisy codes in the masked sum: fl.secagg_masks=false "
                          "would send them in the clear")
    if clients_per_round(fl) < 3:
        raise ConfigError(f"fl.secagg with {clients_per_round(fl)} clients a round: the sum of two updates tells each "
                          "client the other's; sample at least 3 a round")
    bits = int(codec.bits)  # type: ignore[attr-defined]  # a codec that shares a grid has bits
    if modulus_bits(bits, clients_sampled(fl)) > 32:
        raise ConfigError(f"fl.secagg: the sum of {clients_sampled(fl)} codes of {bits} bits needs more than 32 "
                          "bits a value; sample fewer clients a round or lower comm.uplink.bits")


# --- the primitives --------------------------------------------------------------------------------------------------

def key_pair() -> tuple[bytes, bytes]:
    """(private, public) raw X25519 keys, fresh from the OS's randomness."""
    private = X25519PrivateKey.generate()
    return (private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption()),
            private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def agree(private: bytes, public: bytes, info: bytes) -> bytes:
    """The 32-byte key two parties share: X25519, then HKDF-SHA256 bound to ``info`` (the round and the purpose)."""
    secret = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=info).derive(secret)


def mask(key: bytes, size: int, modulus_bits: int) -> np.ndarray:
    """``size`` uniform values mod 2^modulus_bits: the AES-256-CTR keystream of ``key`` (a fresh key per round)."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    stream = np.frombuffer(encryptor.update(bytes(4 * size)) + encryptor.finalize(), np.uint32)
    return stream & np.uint32((1 << modulus_bits) - 1)


def split_secret(secret: bytes, threshold: int, holders: int) -> list[bytes]:
    """Shamir shares of a 32-byte secret for holders 1..``holders``, any ``threshold`` of which rebuild it."""
    chunks = [Shamir.split(threshold, holders, secret[i:i + 16], ssss=False) for i in range(0, SECRET_BYTES, 16)]
    return [index.to_bytes(4, "little") + b"".join(part[holder][1] for part in chunks)
            for holder, (index, _) in enumerate(chunks[0])]


def combine_secret(shares: Sequence[bytes]) -> bytes:
    """The secret that ``threshold`` or more of its shares rebuild."""
    indices = [int.from_bytes(share[:4], "little") for share in shares]
    return b"".join(Shamir.combine([(i, share[4 + c:20 + c]) for i, share in zip(indices, shares)], ssss=False)
                    for c in range(0, SECRET_BYTES, 16))


def encrypt(key: bytes, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, None)


def decrypt(key: bytes, ciphertext: bytes) -> bytes:
    return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], None)


def info(server_round: int, purpose: bytes) -> bytes:
    return purpose + server_round.to_bytes(8, "little")


def sign(mine: int, theirs: int) -> int:
    """The pairwise mask is added by the client with the smaller id and subtracted by the other."""
    return 1 if mine < theirs else -1


def add_mod(total: np.ndarray, values: np.ndarray, signed: int, modulus_bits: int) -> None:
    """``total += signed x values`` mod 2^modulus_bits, in place (uint32 wraps mod 2^32, a multiple of it)."""
    if signed > 0:
        total += values
    else:
        total -= values
    total &= np.uint32((1 << modulus_bits) - 1)


# --- the grid and the graph ------------------------------------------------------------------------------------------

def modulus_bits(bits: int, count: int, noise_std: float = 0.0) -> int:
    """K: the bits that hold the sum of ``count`` codes of ``bits`` bits exactly, and with distributed DP its noise
    of standard deviation ``noise_std`` out to NOISE_TAILS deviations either side."""
    return max(1, math.ceil(math.log2(((1 << bits) - 1) * count + 2 * NOISE_TAILS * noise_std + 1)))


@dataclass(frozen=True)
class Grid:
    """The round's shared grid: 2^bits levels ``(code - (2^bits - 1) / 2) x step`` with one step per block of
    ``block`` values (the same for every client of the round), codes summed mod 2^modulus_bits. With distributed DP
    (``fl.dp.distributed``) each client rounds until its centred codes are within ``norm_bound`` and adds Skellam
    noise of variance ``noise_variance`` per value, so that the sum carries the noise the accountant assumes."""

    steps: np.ndarray
    block: int
    bits: int
    modulus_bits: int
    masked: bool = True  # False: the codes go in the clear (fl.secagg_masks=false, the same grid's baseline)
    noise_variance: float = 0.0
    norm_bound: float = 0.0

    @property
    def width(self) -> int:
        """Bits a value on the wire: the sum's modulus when masked, the code's own bits in the clear."""
        return self.modulus_bits if self.masked else self.bits

    @property
    def top(self) -> int:
        return (1 << self.bits) - 1

    def per_value(self, numel: int) -> np.ndarray:
        return np.repeat(self.steps.astype(np.float64), self.block)[:numel]

    def encode(self, update: np.ndarray, rng: np.random.Generator,
               noise: np.random.Generator | None = None) -> np.ndarray:
        """Unbiased stochastic rounding onto the grid (values beyond the outer levels are clipped to them), with
        distributed DP conditional on the norm bound (Kairouz et al. 2021) and plus the client's Skellam noise drawn
        from ``noise`` (the client's own secret randomness); the codes mod 2^32."""
        position = np.clip(update.astype(np.float64) / self.per_value(update.size) + self.top / 2, 0.0, self.top)
        low = np.floor(position)
        for _ in range(MAX_ROUNDINGS):
            codes = low + (rng.random(update.size) < position - low)
            if not self.norm_bound or float(np.linalg.norm(codes - self.top / 2)) <= self.norm_bound:
                break
        else:
            raise SecAggError(f"no rounding of the update within the norm bound {self.norm_bound:.4g} in "
                              f"{MAX_ROUNDINGS} draws (is it clipped to fl.dp.clip?)")
        whole = codes.astype(np.int64)
        if self.noise_variance:
            assert noise is not None  # a client always passes its own generator
            half = self.noise_variance / 2  # Skellam(mu, mu) = Poisson(mu) - Poisson(mu): variance 2 mu
            whole += noise.poisson(half, update.size) - noise.poisson(half, update.size)
        return (whole & 0xFFFFFFFF).astype(np.uint32)

    def code_sum(self, total: np.ndarray, count: int) -> np.ndarray:
        """The sum of ``count`` clients' codes from ``total`` mod 2^K: as it is without noise (it never wraps), else
        the representative nearest the codes' centre (noise can take it below 0)."""
        if not self.noise_variance:
            return total.astype(np.float64)
        modulus, centre = 1 << self.modulus_bits, count * self.top // 2
        return ((total.astype(np.int64) - centre + modulus // 2) % modulus - modulus // 2 + centre).astype(np.float64)

    def decode_mean(self, total: np.ndarray, count: int) -> np.ndarray:
        """The mean update of ``count`` clients whose codes sum to ``total``."""
        return ((self.code_sum(total, count) / count - self.top / 2) * self.per_value(total.size)).astype(np.float32)

    @classmethod
    def of_scales(cls, scales: Sequence[np.ndarray], block: int, bits: int, count: int, multiplier: float,
                  masked: bool = True) -> Grid:
        """The grid whose outer levels are ``multiplier`` x the median of the clients' block max |x| (``scales``)."""
        median = np.median(np.stack([s.astype(np.float32) for s in scales]), axis=0)
        steps = np.maximum(multiplier * median / (((1 << bits) - 1) / 2), np.finfo(np.float32).tiny)
        return cls(steps.astype(np.float32), block, bits, modulus_bits(bits, count), masked)

    @classmethod
    def of_clip(cls, clip: float, numel: int, bits: int, count: int, multiplier: float, masked: bool = True,
                noise_multiplier: float = 0.0) -> Grid:
        """With fl.dp, a grid from public values only: one step, ``multiplier`` x the RMS of an update of norm
        ``clip``; with distributed DP (``noise_multiplier`` > 0) the norm bound of its rounded codes and each of the
        ``count`` clients' share of the noise, z x that bound on the sum."""
        step = multiplier * clip / math.sqrt(numel)
        bound = rounded_norm_bound(clip / step, numel) if noise_multiplier else 0.0
        variance = (noise_multiplier * bound) ** 2 / count
        modulus = modulus_bits(bits, count, math.sqrt(count * variance))
        if modulus > 32:
            raise SecAggError(f"distributed DP: the sum of {count} clients' codes and noise (z {noise_multiplier:.3g}) "
                              f"needs {modulus} bits a value, more than 32; raise fl.secagg_step or lower the noise")
        return cls(np.array([step], np.float32), numel, bits, modulus, masked, variance, bound)

    def arrays(self) -> list[np.ndarray]:
        return [self.steps]

    def settings(self) -> dict[str, float]:
        return {"block": self.block, "bits": self.bits, "modulus-bits": self.modulus_bits, "masked": int(self.masked),
                "noise-variance": self.noise_variance, "norm-bound": self.norm_bound}

    @classmethod
    def parse(cls, steps: np.ndarray, settings: dict[str, float]) -> Grid:
        return cls(steps.astype(np.float32), int(settings["block"]), int(settings["bits"]), int(settings["modulus-bits"]),
                   bool(settings["masked"]), float(settings["noise-variance"]), float(settings["norm-bound"]))


def rounded_norm_bound(norm: float, numel: int, beta: float = math.exp(-0.5)) -> float:
    """The L2 bound that conditional randomized rounding keeps a vector of norm ``norm`` (in grid steps) within
    (Kairouz, Liu & Steinke, ICML 2021, DDGauss): a draw succeeds with probability at least 1 - ``beta``."""
    squared = norm ** 2 + numel / 4 + math.sqrt(2 * math.log(1 / beta)) * (norm + math.sqrt(numel) / 2)
    return min(math.sqrt(squared), norm + math.sqrt(numel))


def scale_blocks(numel: int, block: int, private: bool) -> int:
    """How many block scales a client reports: one per block of the update, none with fl.dp (the grid is public)."""
    return 0 if private else -(-numel // block)


def block_scales(update: np.ndarray, block: int) -> np.ndarray:
    """Each block's max |x| (float16, rounded up): what a client without fl.dp reports for the round's grid."""
    padded = np.zeros(-(-update.size // block) * block, np.float32)
    padded[:update.size] = np.abs(update)
    top = padded.reshape(-1, block).max(axis=1)
    scales = top.astype(np.float16)
    low = scales.astype(np.float32) < top
    scales[low] = np.nextafter(scales[low], np.float16(np.inf))
    return scales


def neighbours(partitions: Sequence[int], degree: int, rng: np.random.Generator) -> dict[int, list[int]]:
    """SecAgg+'s graph: the clients in a random cyclic order, each linked to ``degree // 2`` on either side (every
    other client when ``degree`` reaches the round's size)."""
    order = [int(p) for p in rng.permutation(list(partitions))]
    n = len(order)
    if degree >= n - 1:
        return {p: sorted(q for q in order if q != p) for p in order}
    half = max(1, degree // 2)
    return {p: sorted({order[(i + d) % n] for d in range(-half, half + 1) if d}) for i, p in enumerate(order)}


def threshold(degree: int) -> int:
    """How many of a client's neighbours must answer to rebuild its secrets: a majority."""
    return degree // 2 + 1


# --- the client's side -----------------------------------------------------------------------------------------------

@dataclass
class ClientSecrets:
    """What a client keeps between the stages of its round (on its own storage; never sent)."""

    cipher_key: bytes  # private X25519 key: agreeing on the keys that encrypt the shares
    mask_key: bytes  # private X25519 key: agreeing on the pairwise masks
    seed: bytes = b""  # the self-mask seed (drawn at the shares stage)
    peers: np.ndarray | None = None  # neighbour ids, and their public keys (rows of 2 x 32 bytes)
    peer_keys: np.ndarray | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {"keys": np.frombuffer(self.cipher_key + self.mask_key + self.seed, np.uint8)}
        if self.peers is not None and self.peer_keys is not None:
            arrays |= {"peers": self.peers, "peer_keys": self.peer_keys}
        return arrays

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray]) -> ClientSecrets:
        keys = arrays["keys"].tobytes()
        return cls(keys[:KEY_BYTES], keys[KEY_BYTES:2 * KEY_BYTES], keys[2 * KEY_BYTES:], arrays.get("peers"),
                   arrays.get("peer_keys"))


def public_keys_of(arrays: Sequence[np.ndarray], blocks: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(the public keys, the ``blocks`` block scales, if any) of a train reply under secure aggregation; SecAggError
    if it is not one."""
    scales = blocks > 0
    expected = 2 if scales else 1
    if len(arrays) != expected or arrays[0].dtype != np.uint8 or arrays[0].shape != (2 * KEY_BYTES,):
        raise SecAggError(f"a secure-aggregation reply must carry its public keys ({2 * KEY_BYTES} bytes)"
                          + (" and its block scales" if scales else "") + f", not {len(arrays)} arrays")
    if scales and (arrays[1].dtype != np.float16 or arrays[1].shape != (blocks,) or not np.isfinite(arrays[1]).all()):
        raise SecAggError(f"a secure-aggregation reply's block scales must be {blocks} finite float16 values")
    return arrays[0], arrays[1] if scales else None


def advertise() -> tuple[ClientSecrets, list[np.ndarray]]:
    """Stage 1: fresh key pairs; the public halves are sent."""
    cipher_private, cipher_public = key_pair()
    mask_private, mask_public = key_pair()
    return ClientSecrets(cipher_private, mask_private), [np.frombuffer(cipher_public + mask_public, np.uint8)]


def share(secrets: ClientSecrets, partition: int, server_round: int, peers: np.ndarray,
          peer_keys: np.ndarray) -> list[np.ndarray]:
    """Stage 2: draw the self-mask seed, share it and the mask key among the neighbours ``peers`` (their public keys
    ``peer_keys``: rows of cipher key, mask key), each share encrypted for its holder; returns the ciphertexts."""
    if len(peers) < 1 or peer_keys.shape != (len(peers), 2 * KEY_BYTES):
        raise SecAggError(f"a shares request with {len(peers)} neighbours and keys of shape {peer_keys.shape}")
    secrets.seed = os.urandom(SECRET_BYTES)
    secrets.peers, secrets.peer_keys = peers.astype(np.int64), peer_keys.astype(np.uint8)
    t = threshold(len(peers))
    seed_shares = split_secret(secrets.seed, t, len(peers))
    key_shares = split_secret(secrets.mask_key, t, len(peers))
    rows = []
    for peer, keys, seed_share, key_share in zip(peers, peer_keys, seed_shares, key_shares):
        key = agree(secrets.cipher_key, keys[:KEY_BYTES].tobytes(), info(server_round, SHARES_INFO))
        plaintext = int(partition).to_bytes(4, "little") + int(peer).to_bytes(4, "little") + seed_share + key_share
        rows.append(np.frombuffer(encrypt(key, plaintext), np.uint8))
    return [np.stack(rows)]


def masked_codes(secrets: ClientSecrets, partition: int, server_round: int, codes: np.ndarray, grid: Grid,
                 sharing: np.ndarray) -> list[np.ndarray]:
    """Stage 3: the codes plus the self mask and a pairwise mask with each neighbour in ``sharing`` (those that sent
    their shares), mod 2^K, packed in K bits."""
    if not grid.masked:
        return [pack_bits(codes, grid.bits)]
    assert secrets.peers is not None and secrets.peer_keys is not None  # the shares stage kept them
    total = codes.astype(np.uint32, copy=True)
    add_mod(total, mask(secrets.seed, codes.size, grid.modulus_bits), 1, grid.modulus_bits)
    keys = dict(zip(secrets.peers.tolist(), secrets.peer_keys))
    for peer in sharing.tolist():
        if peer not in keys:
            raise SecAggError(f"client {partition} was told to mask with {peer}, which is not its neighbour")
        pairwise = agree(secrets.mask_key, keys[peer][KEY_BYTES:].tobytes(), info(server_round, MASK_INFO))
        add_mod(total, mask(pairwise, codes.size, grid.modulus_bits), sign(partition, peer), grid.modulus_bits)
    return [pack_bits(total, grid.modulus_bits)]


def reveal(secrets: ClientSecrets, partition: int, server_round: int, senders: np.ndarray, ciphertexts: np.ndarray,
           survived: np.ndarray) -> list[np.ndarray]:
    """Stage 4: decrypt the shares the neighbours ``senders`` sent this client; return each one's seed share if it
    ``survived`` (sent its masked codes), else its mask-key share, as rows (index, share)."""
    assert secrets.peers is not None and secrets.peer_keys is not None
    keys = dict(zip(secrets.peers.tolist(), secrets.peer_keys))
    rows = []
    for sender, ciphertext, alive in zip(senders.tolist(), ciphertexts, survived.tolist()):
        if sender not in keys:
            raise SecAggError(f"client {partition} holds no key of client {sender}")
        key = agree(secrets.cipher_key, keys[sender][:KEY_BYTES].tobytes(), info(server_round, SHARES_INFO))
        try:
            plaintext = decrypt(key, ciphertext.tobytes())
        except InvalidTag:  # tampered with, or encrypted for another client
            raise SecAggError(f"client {partition} could not decrypt the share of client {sender}: not addressed to it "
                              "or altered") from None
        if int.from_bytes(plaintext[:4], "little") != sender or int.from_bytes(plaintext[4:8], "little") != partition:
            raise SecAggError(f"client {partition} was forwarded a share that client {sender} did not address to it")
        start = 8 if alive else 8 + SHARE_BYTES
        rows.append(np.frombuffer(plaintext[start:start + SHARE_BYTES], np.uint8))
    return [np.stack(rows) if rows else np.zeros((0, SHARE_BYTES), np.uint8)]


# --- the server's side -----------------------------------------------------------------------------------------------

@dataclass
class StageMessage:
    """One stage's message to one client: its arrays and settings (the exchange carries it like a train request)."""

    stage: str
    arrays: list[np.ndarray]
    settings: dict[str, float]


Exchanger = Callable[[dict[int, StageMessage]], dict[int, list[np.ndarray] | None]]


class SecureSum:
    """The server's side of stages 2-4 for one round: whom to send what, and the sum it may learn.

    ``exchange`` sends each client its stage message and returns each one's reply arrays (None: no reply)."""

    def __init__(self, server_round: int, numel: int, grid: Grid, degree: int, rng: np.random.Generator) -> None:
        self.server_round = server_round
        self.numel = numel
        self.grid = grid
        self.degree = degree
        self.rng = rng

    def run(self, public_keys: dict[int, np.ndarray], exchange: Exchanger) -> tuple[np.ndarray, int]:
        """(the sum of the codes of the clients whose masked vectors arrived, how many they are)."""
        clients = sorted(public_keys)
        if not self.grid.masked:  # the same grid in the clear (fl.secagg_masks=false): the codes, summed
            total, survived = self._collect(exchange, {p: [] for p in clients})
            return total, len(survived)
        graph = neighbours(clients, self.degree, self.rng)
        ciphertexts = self._share(exchange, graph, public_keys)
        sharing = {p: [q for q in graph[p] if q in ciphertexts] for p in ciphertexts}  # U2: their masks can be removed
        total, survived = self._collect(exchange, sharing)
        self._unmask(exchange, total, graph, ciphertexts, survived, public_keys)
        return total, len(survived)

    def _share(self, exchange: Exchanger, graph: dict[int, list[int]],
               public_keys: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Stage 2: each client's encrypted shares (rows in the order of its neighbours)."""
        messages = {p: StageMessage(SHARES, [np.array(graph[p], np.int64),
                                             np.stack([public_keys[q] for q in graph[p]])], {}) for p in graph}
        ciphertexts: dict[int, np.ndarray] = {}
        for p, reply in exchange(messages).items():
            if reply is not None and len(reply) == 1 and reply[0].shape == (len(graph[p]), CIPHER_BYTES):
                ciphertexts[p] = reply[0]
        return ciphertexts

    def _collect(self, exchange: Exchanger, sharing: dict[int, list[int]]) -> tuple[np.ndarray, list[int]]:
        """Stage 3: the sum of the masked vectors as they arrive (none is kept), and who sent one."""
        messages = {p: StageMessage(MASKED, [np.array(peers, np.int64), *self.grid.arrays()], self.grid.settings())
                    for p, peers in sharing.items()}
        total = np.zeros(self.numel, np.uint32)
        survived: list[int] = []
        width = self.grid.width
        for p, reply in exchange(messages).items():
            if reply is not None and len(reply) == 1 and reply[0].size == math.ceil(self.numel * width / 8):
                add_mod(total, unpack_bits(reply[0], width, self.numel).astype(np.uint32), 1, self.grid.modulus_bits)
                survived.append(p)
        if not survived:
            raise SecAggError("secure aggregation: no client sent its masked update")
        return total, survived

    def _unmask(self, exchange: Exchanger, total: np.ndarray, graph: dict[int, list[int]],
                ciphertexts: dict[int, np.ndarray], survived: list[int], public_keys: dict[int, np.ndarray]) -> None:
        """Stage 4: the shares the survivors reveal; the masks they rebuild are removed from ``total`` in place."""
        alive = set(survived)
        messages = {}
        for p in survived:
            senders = [q for q in graph[p] if q in ciphertexts]
            rows = [ciphertexts[q][graph[q].index(p)] for q in senders]
            messages[p] = StageMessage(UNMASK, [np.array(senders, np.int64), np.stack(rows),
                                                np.array([q in alive for q in senders], np.uint8)], {})
        held: dict[int, list[bytes]] = {p: [] for p in ciphertexts}  # each client's shares its neighbours returned
        for p, reply in exchange(messages).items():
            senders = messages[p].arrays[0].tolist()
            if reply is not None and len(reply) == 1 and reply[0].shape == (len(senders), SHARE_BYTES):
                for q, row in zip(senders, reply[0]):
                    held[q].append(row.tobytes())
        modulus = self.grid.modulus_bits
        for p in sorted(ciphertexts):
            if len(held[p]) < threshold(len(graph[p])):
                raise SecAggError(f"secure aggregation: {len(held[p])} of client {p}'s {len(graph[p])} neighbours "
                                  f"returned its shares, {threshold(len(graph[p]))} needed to remove its mask")
            secret = combine_secret(held[p])
            if p in alive:  # its self mask
                add_mod(total, mask(secret, self.numel, modulus), -1, modulus)
                continue
            for q in graph[p]:  # a client that shared but sent nothing: the pairwise masks its neighbours added
                if q in alive:
                    pairwise = agree(secret, public_keys[q][KEY_BYTES:].tobytes(), info(self.server_round, MASK_INFO))
                    add_mod(total, mask(pairwise, self.numel, modulus), -sign(q, p), modulus)
