"""Synthetic federation data for the demo and tests: transactions, subjects, wallets.

Every address is checksum-valid (Bitcoin P2PKH, P2SH, P2WPKH and taproot;
Ethereum EIP-55 mixed case and some all lower case). A laundering network of
about 60 wallets is planted across two or three jurisdictions each, and a few
persons appear in several jurisdictions spelled in different scripts. Output is
deterministic for a given seed.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedtrace.identifiers import base58, bech32
from fedtrace.identifiers.evm import to_checksum_address

TRANSACTION_COLUMNS = (
    "tx_hash", "chain", "from_address", "to_address", "asset", "amount", "amount_eur", "timestamp",
)  # fmt: skip
SUBJECT_COLUMNS = ("subject_id", "full_name", "date_of_birth", "nationality", "document_number")
SUBJECT_WALLET_COLUMNS = ("subject_id", "address", "chain")

PLANTED_WALLETS = 60
SUBJECTS_PER_JURISDICTION = 200
_EUR_PRICE = {"BTC": 58_000.0, "ETH": 2_900.0, "USDT": 0.92}
_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)

_NAMES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("EE", ("Mari", "Kadri", "Jaan", "Tõnu", "Märt", "Liis", "Priit"),
     ("Tamm", "Saar", "Sepp", "Mägi", "Kask", "Põder", "Rebane")),
    ("FR", ("Élodie", "François", "Hélène", "Jérôme", "Chloé", "Loïc", "Inès"),
     ("Lefèvre", "Dubois", "Moreau", "Girard", "Bérénger", "Faure", "Rousseau")),
    ("SG", ("Wei Ling", "Kumar", "Siti", "Jun Jie", "Priya", "Ahmad", "Mei"),
     ("Tan", "Lim", "Ng", "Rahman", "Pillai", "Goh", "Chua")),
    ("RU", ("Сергей", "Алексей", "Ольга", "Наталья", "Дмитрий", "Ирина", "Юрий"),
     ("Иванов", "Смирнов", "Кузнецова", "Попов", "Соколова", "Волков", "Лебедев")),
    ("GR", ("Γιώργος", "Μαρία", "Νίκος", "Ελένη", "Κώστας", "Δημήτρης", "Σοφία"),
     ("Παπαδόπουλος", "Οικονόμου", "Γεωργίου", "Νικολάου", "Καραγιάννης", "Βλάχος", "Ζαχαρίου")),
    ("AE", ("محمد", "أحمد", "فاطمة", "علي", "خالد", "مريم", "يوسف"),
     ("الهاشمي", "المنصوري", "الشامسي", "النعيمي", "الكعبي", "الظاهري", "المهيري")),
    ("DE", ("Jürgen", "Björn", "Käthe", "Günther", "Jörg", "Sören", "Ute"),
     ("Müller", "Schröder", "Weiß", "Köhler", "Groß", "Hoffmann", "Böhm")),
)  # fmt: skip

# The same person as recorded in different jurisdictions; each pair agrees on at
# least one key (name_dob or phonetic_dob) under the identifier rules.
_SHARED_PERSONS: tuple[tuple[str, str, str], ...] = (
    ("Сергей Иванов", "Sergei Ivanov", "1979-04-17"),
    ("Γιώργος Παπαδόπουλος", "Giorgos Papadopoulos", "1983-11-02"),
    ("MÜLLER, Hans-Peter", "Hans Peter Muller", "1968-07-30"),
    ("François Lefèvre", "LEFEVRE Francois", "1990-01-25"),
    ("Алексей Смирнов", "Aleksey Smirnov", "1986-03-14"),
)
_SHARED_NATIONALITY = ("RU", "GR", "DE", "FR", "RU")


@dataclass(frozen=True)
class DemoData:
    """What was generated, in canonical form, so tests can check answers."""

    out_dir: Path
    seed: int
    jurisdictions: tuple[str, ...]
    wallets: Mapping[str, frozenset[str]]
    planted: frozenset[str]
    planted_in: Mapping[str, frozenset[str]]
    shared_persons: tuple[tuple[str, str, str], ...]

    def tables(
        self, code: str, names: Sequence[str] = ("transactions", "subjects", "subject_wallets")
    ) -> dict[str, Path]:
        """Table name -> CSV of one jurisdiction, in ingest order (for `node ingest --table`)."""
        return {name: self.out_dir / code / f"{name}.csv" for name in names}

    def watchlist(self, size: int = 200) -> list[str]:
        """A deterministic watchlist: planted wallets (often written in a
        non-canonical but valid form) mixed with addresses no node holds."""
        rng = random.Random(f"watchlist:{self.seed}:{size}")
        planted = sorted(self.planted)
        rng.shuffle(planted)
        chosen = planted[: min(len(planted), size // 2)]
        entries = [_respell(address, rng) for address in chosen]
        held = set().union(*self.wallets.values()) if self.wallets else set()
        while len(entries) < size:
            address, canonical = _random_address(rng, "btc" if rng.random() < 0.5 else "eth")
            if canonical not in held:
                entries.append(address)
        rng.shuffle(entries)
        return entries


def _respell(canonical: str, rng: random.Random) -> str:
    """A valid, possibly non-canonical way of writing ``canonical``."""
    roll = rng.random()
    if canonical.startswith("0x"):
        if roll < 0.4:
            return to_checksum_address(canonical[2:])
        if roll < 0.6:
            return "0x" + canonical[2:].upper()
        return canonical
    if canonical.startswith(("bc1", "tb1")) and roll < 0.5:
        return canonical.upper()
    return canonical


def _random_address(rng: random.Random, chain: str) -> tuple[str, str]:
    """``(written form, canonical form)`` of a fresh address on ``chain``."""
    if chain == "eth":
        body = rng.randbytes(20).hex()
        written = to_checksum_address(body) if rng.random() < 0.7 else "0x" + body
        return written, "0x" + body
    roll = rng.random()
    if roll < 0.35:
        address = base58.encode_check(b"\x00" + rng.randbytes(20))
    elif roll < 0.5:
        address = base58.encode_check(b"\x05" + rng.randbytes(20))
    elif roll < 0.85:
        address = bech32.encode_segwit("bc", 0, rng.randbytes(20))
    else:
        address = bech32.encode_segwit("bc", 1, rng.randbytes(32))
    return address, address


@dataclass
class _Wallet:
    chain: str
    canonical: str
    written: str


def _plant_network(
    rng: random.Random, codes: Sequence[str]
) -> dict[str, tuple[_Wallet, frozenset[str]]]:
    planted: dict[str, tuple[_Wallet, frozenset[str]]] = {}
    if len(codes) < 2:
        return planted
    while len(planted) < PLANTED_WALLETS:
        chain = "btc" if len(planted) % 2 == 0 else "eth"
        written, canonical = _random_address(rng, chain)
        if len(codes) >= 3 and (len(planted) % 4 == 0 or rng.random() < 0.2):
            members = (
                frozenset(codes[:3])
                if len(planted) % 8 == 0
                else frozenset(rng.sample(list(codes), 3))
            )
        else:
            members = frozenset(rng.sample(list(codes), 2))
        planted[canonical] = (_Wallet(chain, canonical, written), members)
    return planted


def _amount(rng: random.Random, asset: str) -> tuple[str, str]:
    if asset == "USDT":
        amount = round(rng.uniform(50, 250_000), 2)
        text = f"{amount:.2f}"
    elif asset == "BTC":
        amount = round(rng.lognormvariate(-2.5, 1.4), 8)
        text = f"{amount:.8f}"
    else:
        amount = round(rng.lognormvariate(-0.5, 1.3), 6)
        text = f"{amount:.6f}"
    return text, f"{amount * _EUR_PRICE[asset]:.2f}"


def _write_csv(path: Path, header: Sequence[str], rows: list[Sequence[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _jurisdiction_rows(
    rng: random.Random,
    code: str,
    count: int,
    network: dict[str, tuple[_Wallet, frozenset[str]]],
) -> tuple[list[Sequence[str]], dict[str, _Wallet], list[_Wallet]]:
    local: dict[str, list[_Wallet]] = {"btc": [], "eth": []}
    pool_size = max(20, count // 16)
    for i in range(pool_size):
        chain = "btc" if i % 2 == 0 else "eth"
        written, canonical = _random_address(rng, chain)
        local[chain].append(_Wallet(chain, canonical, written))
    ours: list[_Wallet] = []
    for wallet, members in network.values():
        if code in members:
            written = wallet.written
            if wallet.chain == "eth":  # each node writes EVM addresses its own way
                written = _respell(wallet.canonical, rng)
            ours.append(_Wallet(wallet.chain, wallet.canonical, written))
    slots: list[tuple[_Wallet | None, str]] = []
    for wallet in ours:
        slots.extend((wallet, wallet.chain) for _ in range(rng.randint(3, 6)))
    slots = slots[:count]
    while len(slots) < count:
        slots.append((None, "btc" if rng.random() < 0.5 else "eth"))
    rng.shuffle(slots)
    rows: list[Sequence[str]] = []
    present: dict[str, _Wallet] = {}
    for planted, chain in slots:
        pool = local[chain]
        counterpart = pool[rng.randrange(len(pool))]
        if planted is None:
            other = pool[rng.randrange(len(pool))]
            sender, receiver = (counterpart, other)
        else:
            sender, receiver = (
                (planted, counterpart) if rng.random() < 0.5 else (counterpart, planted)
            )
        present[sender.canonical] = sender
        present[receiver.canonical] = receiver
        if chain == "btc":
            asset, tx_hash = "BTC", rng.randbytes(32).hex()
        else:
            asset = "ETH" if rng.random() < 0.6 else "USDT"
            tx_hash = "0x" + rng.randbytes(32).hex()
        amount, amount_eur = _amount(rng, asset)
        when = _EPOCH + dt.timedelta(seconds=rng.randrange(366 * 86_400))
        stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        rows.append(
            (tx_hash, chain, sender.written, receiver.written, asset, amount, amount_eur, stamp)
        )
    rows.sort(key=lambda row: row[7])
    return rows, present, ours


def _subjects(
    rng: random.Random,
    code: str,
    index: int,
    present: dict[str, _Wallet],
    planted: list[_Wallet],
) -> tuple[list[Sequence[str]], list[Sequence[str]]]:
    subjects: list[Sequence[str]] = []
    links: list[Sequence[str]] = []
    wallets = sorted(present.values(), key=lambda w: w.canonical)
    for number in range(SUBJECTS_PER_JURISDICTION):
        subject_id = f"{code}-S{number + 1:04d}"
        if number < len(_SHARED_PERSONS) and (number + index) % 3 != 2:
            native, latin, dob = _SHARED_PERSONS[number]
            name = native if index % 2 == 0 else latin
            nationality = _SHARED_NATIONALITY[number]
        else:
            nationality, firsts, lasts = _NAMES[rng.randrange(len(_NAMES))]
            first, last = rng.choice(firsts), rng.choice(lasts)
            name = f"{last.upper()}, {first}" if rng.random() < 0.2 else f"{first} {last}"
            dob = (dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(19_000))).isoformat()
        letters = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(2))
        document = f"{letters}{rng.randrange(10**7):07d}"
        subjects.append((subject_id, name, dob, nationality, document))
        if number < 20 and number < len(planted):
            links.append((subject_id, planted[number].written, planted[number].chain))
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            wallet = wallets[rng.randrange(len(wallets))]
            links.append((subject_id, wallet.written, wallet.chain))
    return subjects, links


def generate_federation_data(
    out_dir: Path,
    jurisdictions: Sequence[str] = ("EE", "FR", "SG"),
    transactions_per_jurisdiction: int = 20000,
    seed: int = 7,
) -> DemoData:
    """Write ``out_dir/<CODE>/{transactions,subjects,subject_wallets}.csv`` per jurisdiction."""
    codes = tuple(jurisdictions)
    if len(set(codes)) != len(codes) or not codes:
        raise ValueError("jurisdictions must be distinct and at least one")
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    network = _plant_network(rng, codes)
    wallets: dict[str, frozenset[str]] = {}
    for index, code in enumerate(codes):
        directory = out_dir / code
        directory.mkdir(parents=True, exist_ok=True)
        rows, present, planted = _jurisdiction_rows(
            rng, code, transactions_per_jurisdiction, network
        )
        subjects, links = _subjects(rng, code, index, present, planted)
        _write_csv(directory / "transactions.csv", TRANSACTION_COLUMNS, rows)
        _write_csv(directory / "subjects.csv", SUBJECT_COLUMNS, subjects)
        _write_csv(directory / "subject_wallets.csv", SUBJECT_WALLET_COLUMNS, links)
        wallets[code] = frozenset(present)
    planted_in = {
        canonical: frozenset(c for c in members if canonical in wallets[c])
        for canonical, (_, members) in network.items()
    }
    return DemoData(
        out_dir=out_dir,
        seed=seed,
        jurisdictions=codes,
        wallets=wallets,
        planted=frozenset(network),
        planted_in=planted_in,
        shared_persons=_SHARED_PERSONS,
    )
