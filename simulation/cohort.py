"""A virtual cohort: N subjects x D days of patch readings with ground-truth episodes.

Every subject is a `PatchEnvironment` (sensor_drivers/environment_model.py) given a life:
a skin type, a place on Earth and a season, workdays indoors and weekends outside, clouds,
sunscreen, moisturiser, exercise, baths, and now and then a fever, a local inflammation or
a patch coming loose. What the environment model does not know (a personal circadian
amplitude, the skin's response to a warm bath or to cold air outside, a detached electrode,
sensor noise) is added here, each with its assumption named. Every episode is written with
its true start and end, so models can be scored against it.

    python -m simulation.cohort --subjects 32 --days 7 --seed 1 --out build/cohort

writes `subjects.parquet`, `samples.parquet`, `episodes.parquet` and `DATASHEET.md`.
Deterministic per seed: the same arguments give byte-identical tables.

Rates: skin temperature every 10 s and hydration every 60 s as a patch samples them;
UV every 60 s (the patch samples every 5 s; a minute is fine enough for daily doses and
keeps the cohort small); battery every 300 s.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sensor_drivers.environment_model import SECONDS_PER_DAY, PatchEnvironment

MED_SED_BY_FITZPATRICK = {1: 2.0, 2: 2.5, 3: 3.0, 4: 4.5, 5: 6.0, 6: 10.0}
# Fitzpatrick types in a mixed European/North-American clinic population (ASSUMED).
SKIN_TYPE_WEIGHTS = {1: 0.08, 2: 0.27, 3: 0.30, 4: 0.20, 5: 0.10, 6: 0.05}
PERIOD_S = {"skin_temp_c": 10, "uv_index": 60, "hydration_au": 60,
            "battery_pct": 300}
# Positive episodes: what a temperature anomaly detector should find.
POSITIVE_KINDS = ("fever", "inflammation")

# --- what the environment model lacks (all ASSUMED, magnitudes from the ranges cited) ---
# Distal skin's day-night swing varies between people, ~0.5-2 degC (Krauchi & Wirz-Justice,
# Am J Physiol 1994); the environment model carries 0.4 degC, the rest is added here.
EXTRA_CIRCADIAN_C = (0.1, 1.2)
# A warm bath or shower: skin +1.5 degC relaxing with 20 min; surface hydration +35 AU
# evaporating with 25 min (the Corneometer reads wet skin high).
BATH_SKIN_RISE_C = 1.5
BATH_SKIN_TAU_S = 1200.0
BATH_HYDRATION_AU = 35.0
BATH_HYDRATION_TAU_S = 1500.0
# Outdoors the skin follows the air a little: +0.4 degC in summer, -1.2 degC in winter,
# first order with 15 min.
OUTDOOR_SKIN_SHIFT_C = {"summer": 0.4, "winter": -1.2}
OUTDOOR_SKIN_TAU_S = 900.0
# A loose patch: the sensor drifts towards the air under the clothing (24 degC) with 10 min
# and the electrode loses the skin (hydration towards 0 AU with 2 min).
AMBIENT_UNDER_CLOTHING_C = 24.0
LOOSE_TEMP_TAU_S = 600.0
LOOSE_HYDRATION_TAU_S = 120.0
# Sensor noise: TMP117 +-0.1 degC accuracy, 0.02 degC rms noise; LTR390 5 % of reading;
# FDC1004 0.5 AU rms equivalent.
TEMP_NOISE_C = 0.02
UV_NOISE_FRACTION = 0.05
HYDRATION_NOISE_AU = 0.5
# Sunscreen: SPF 30 applied as people do (a third to a half of the tested amount) protects
# about 5x (ASSUMED, after Faurschou & Wulf, Br J Dermatol 2007). The patch still sees the sun.
SUNSCREEN_PROTECTION = 5.0


@dataclass
class Subject:
    subject: str
    seed: int
    skin_type: int
    latitude_deg: float
    longitude_deg: float
    day_of_year: int
    season: str
    skin_baseline_c: float
    hydration_baseline_au: float
    extra_circadian_c: float
    split: str
    env: PatchEnvironment = field(repr=False, default=None)  # type: ignore[assignment]
    episodes: list[dict] = field(default_factory=list)
    outdoor: list[tuple[float, float, str]] = field(default_factory=list)
    baths: list[float] = field(default_factory=list)
    loose: list[tuple[float, float]] = field(default_factory=list)

    @property
    def med_sed(self) -> float:
        return MED_SED_BY_FITZPATRICK[self.skin_type]


def _episode(kind: str, start_s: float, end_s: float, magnitude: float = 0.0) -> dict:
    return {"kind": kind, "start_s": int(start_s), "end_s": int(end_s),
            "magnitude": float(magnitude), "positive": kind in POSITIVE_KINDS}


def make_subject(index: int, days: int, rng: np.random.Generator, split: str) -> Subject:
    types = list(SKIN_TYPE_WEIGHTS)
    skin_type = int(rng.choice(types, p=list(SKIN_TYPE_WEIGHTS.values())))
    latitude = float(rng.uniform(-40.0, 60.0))
    season = "summer" if rng.random() < 0.6 else "winter"
    north_summer = (latitude >= 0) == (season == "summer")
    day_of_year = int(rng.integers(150, 230) if north_summer else rng.integers(330, 365 + 40))
    day_of_year = (day_of_year - 1) % 365 + 1
    subject = Subject(
        subject=f"c-{index:04d}", seed=1000 + index, skin_type=skin_type, latitude_deg=latitude,
        longitude_deg=float(rng.uniform(-120.0, 150.0)), day_of_year=day_of_year, season=season,
        skin_baseline_c=float(rng.normal(33.3, 0.6)),
        hydration_baseline_au=float(rng.uniform(38.0, 60.0)),
        extra_circadian_c=float(rng.uniform(*EXTRA_CIRCADIAN_C)), split=split)
    env = PatchEnvironment(seed=subject.seed, latitude_deg=latitude, day_of_year=day_of_year,
                           default_location="indoor", skin_baseline_c=subject.skin_baseline_c,
                           hydration_baseline_au=subject.hydration_baseline_au,
                           initial_soc_pct=float(rng.uniform(70, 100)))
    subject.env = env
    for day in range(days):
        d0 = day * SECONDS_PER_DAY
        weekend = (day + index) % 7 in (5, 6)
        if weekend:
            blocks = [(rng.uniform(9.5, 11.5), rng.uniform(1.5, 4.0))]
            if rng.random() < 0.5:
                blocks.append((rng.uniform(14.0, 16.0), rng.uniform(0.5, 2.0)))
        else:
            blocks = [(rng.uniform(7.5, 8.5), rng.uniform(0.2, 0.5)),
                      (rng.uniform(12.0, 12.75), rng.uniform(0.25, 1.0)),
                      (rng.uniform(17.0, 18.0), rng.uniform(0.2, 1.0))]
        for start_h, hours in blocks:
            start, end = d0 + start_h * 3600, d0 + (start_h + hours) * 3600
            place = "shade" if rng.random() < 0.25 else "outdoor"
            env.set_location(place, start, end)
            subject.outdoor.append((start, end, place))
            sunscreen = place == "outdoor" and rng.random() < 0.35
            subject.episodes.append(_episode("sunscreen" if sunscreen else "outdoor",
                                             start, end, SUNSCREEN_PROTECTION if sunscreen
                                             else 1.0))
        clouds = rng.choice(["clear", "scattered", "broken", "overcast"],
                            p=[0.35, 0.3, 0.2, 0.15])
        env.set_clouds(str(clouds), d0, d0 + SECONDS_PER_DAY)
        if rng.random() < 0.45:
            start = d0 + rng.uniform(6.5, 20.0) * 3600
            duration = rng.uniform(25, 90) * 60
            intensity = float(rng.uniform(0.4, 1.0))
            env.add_exercise(start, duration, intensity)
            subject.episodes.append(_episode("exercise", start, start + duration, intensity))
        if rng.random() < 0.7:
            start = d0 + (rng.uniform(6.5, 8.0) if rng.random() < 0.5
                          else rng.uniform(20.0, 22.5)) * 3600
            subject.baths.append(start)
            subject.episodes.append(_episode("bath", start, start + 1800, BATH_SKIN_RISE_C))
        if rng.random() < 0.4:
            start = d0 + rng.uniform(7.0, 22.0) * 3600
            env.apply_moisturiser(start)
            subject.episodes.append(_episode("moisturiser", start, start + 3 * 3600, 25.0))
        if rng.random() < 0.15:
            start = d0 + rng.uniform(8.0, 18.0) * 3600
            end = start + rng.uniform(2.0, 6.0) * 3600
            drop = float(rng.uniform(10.0, 25.0))
            env.add_drying(start, end, drop)
            subject.episodes.append(_episode("drying", start, end, drop))
        if rng.random() < 0.08:
            start = d0 + rng.uniform(0.0, 23.0) * 3600
            end = start + rng.uniform(0.5, 4.0) * 3600
            subject.loose.append((start, end))
            subject.episodes.append(_episode("loose", start, end))
    # At most one fever and one local inflammation per subject, away from the first day
    # (a personal baseline needs a day to learn).
    if days >= 3 and rng.random() < 0.35:
        start = rng.uniform(1.3, days - 1.2) * SECONDS_PER_DAY
        duration = rng.uniform(8.0, 30.0) * 3600
        core_rise = float(rng.uniform(1.0, 2.2))
        env.set_fever(core_rise, start, duration)
        subject.episodes.append(_episode("fever", start, start + duration, 0.8 * core_rise))
    if days >= 3 and rng.random() < 0.3:
        start = rng.uniform(1.3, days - 0.8) * SECONDS_PER_DAY
        offset = float(rng.uniform(1.5, 3.0))
        rise = rng.uniform(1.0, 4.0) * 3600
        env.set_inflammation(offset, start, rise)
        subject.episodes.append(_episode("inflammation", start, days * SECONDS_PER_DAY, offset))
    return subject


def _first_order_after(t: np.ndarray, start: float, tau: float) -> np.ndarray:
    since = t - start
    return np.where(since >= 0, np.exp(-np.clip(since, 0, None) / tau), 0.0)


def _outdoor_shift(subject: Subject, t: np.ndarray) -> np.ndarray:
    """Skin's first-order approach to the outdoor shift while outside, and back."""
    shift = np.zeros_like(t)
    target = OUTDOOR_SKIN_SHIFT_C[subject.season]
    for start, end, _ in subject.outdoor:
        inside = (t >= start) & (t < end)
        since = np.clip(t - start, 0, None)
        shift += np.where(inside, target * (1 - np.exp(-since / OUTDOOR_SKIN_TAU_S)), 0.0)
        reached = target * (1 - math.exp(-(end - start) / OUTDOOR_SKIN_TAU_S))
        shift += np.where(t >= end, reached * np.exp(-np.clip(t - end, 0, None)
                                                     / OUTDOOR_SKIN_TAU_S), 0.0)
    return shift


def _loose_weight(subject: Subject, t: np.ndarray, tau: float) -> np.ndarray:
    """0 (on the skin) .. 1 (fully detached) for each time."""
    weight = np.zeros_like(t)
    for start, end in subject.loose:
        inside = (t >= start) & (t < end)
        since = np.clip(t - start, 0, None)
        weight = np.maximum(weight, np.where(inside, 1 - np.exp(-since / tau), 0.0))
        reached = 1 - math.exp(-(end - start) / tau)
        weight = np.maximum(weight, np.where(t >= end, reached * np.exp(
            -np.clip(t - end, 0, None) / tau), 0.0))
    return weight


def skin_temp_series(subject: Subject, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    env = subject.env
    base = np.array([env.skin_temp_c_at(float(x)) for x in t])
    phase = 2 * math.pi * (t - 4 * 3600) / SECONDS_PER_DAY
    base += subject.extra_circadian_c * np.cos(phase)
    base += _outdoor_shift(subject, t)
    for start in subject.baths:
        base += BATH_SKIN_RISE_C * _first_order_after(t, start, BATH_SKIN_TAU_S)
    loose = _loose_weight(subject, t, LOOSE_TEMP_TAU_S)
    base = base * (1 - loose) + AMBIENT_UNDER_CLOTHING_C * loose
    return base + rng.normal(0.0, TEMP_NOISE_C, size=t.shape)


def hydration_series(subject: Subject, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    env = subject.env
    au = np.array([env.hydration_au_at(float(x)) for x in t])
    for start in subject.baths:
        au += BATH_HYDRATION_AU * _first_order_after(t, start, BATH_HYDRATION_TAU_S)
    au *= 1 - _loose_weight(subject, t, LOOSE_HYDRATION_TAU_S)
    return np.clip(au + rng.normal(0.0, HYDRATION_NOISE_AU, size=t.shape), 0.0, 120.0)


def subject_samples(subject: Subject, days: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(subject.seed)
    end = days * SECONDS_PER_DAY
    series = {}
    t = np.arange(0, end, PERIOD_S["skin_temp_c"], dtype=np.float64)
    series["skin_temp_c"] = (t, skin_temp_series(subject, t, rng))
    t = np.arange(0, end, PERIOD_S["uv_index"], dtype=np.float64)
    uv = np.array([subject.env.uv_index_at(float(x)) for x in t])
    uv *= 1 + rng.normal(0.0, UV_NOISE_FRACTION, size=t.shape)
    series["uv_index"] = (t, np.clip(uv, 0.0, None))
    t = np.arange(0, end, PERIOD_S["hydration_au"], dtype=np.float64)
    series["hydration_au"] = (t, hydration_series(subject, t, rng))
    t = np.arange(0, end, PERIOD_S["battery_pct"], dtype=np.float64)
    series["battery_pct"] = (t, np.array([subject.env.battery_soc_pct_at(float(x)) for x in t]))
    return series


def make_cohort(subjects: int, days: int, seed: int, held_out_fraction: float = 0.5):
    rng = np.random.default_rng(seed)
    cohort = []
    for i in range(subjects):
        split = "test" if i >= subjects * (1 - held_out_fraction) else "train"
        cohort.append(make_subject(i + seed * 10_000, days, rng, split))
    return cohort


def write_cohort(cohort: list[Subject], days: int, seed: int, out: Path,
                 progress=None) -> dict[str, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    subject_rows: dict[str, list] = {k: [] for k in ("subject", "split", "skin_type", "med_sed", "latitude_deg",
                                    "longitude_deg", "day_of_year", "season",
                                    "skin_baseline_c", "hydration_baseline_au",
                                    "extra_circadian_c")}
    episode_rows: dict[str, list] = {k: [] for k in ("subject", "kind", "start_s", "end_s", "magnitude",
                                    "positive")}
    sample_tables = []
    for n, subject in enumerate(cohort):
        for key in subject_rows:
            value = subject.med_sed if key == "med_sed" else getattr(subject, key)
            subject_rows[key].append(value)
        for episode in sorted(subject.episodes, key=lambda e: (e["start_s"], e["kind"])):
            episode_rows["subject"].append(subject.subject)
            for key in ("kind", "start_s", "end_s", "magnitude", "positive"):
                episode_rows[key].append(episode[key])
        for prop, (t, values) in subject_samples(subject, days).items():
            sample_tables.append(pa.table({
                "subject": pa.array([subject.subject] * len(t)).dictionary_encode(),
                "property": pa.array([prop] * len(t)).dictionary_encode(),
                "t_s": pa.array(t.astype(np.int32)),
                "value": pa.array(values.astype(np.float32)),
            }))
        if progress:
            progress(n + 1, len(cohort))
    samples = pa.concat_tables(sample_tables).combine_chunks()
    # Fixed writer options, no timestamps: the same seed gives the same bytes.
    options = {"compression": "zstd", "write_statistics": False}
    pq.write_table(pa.table(subject_rows), out / "subjects.parquet", **options)
    pq.write_table(pa.table(episode_rows), out / "episodes.parquet", **options)
    pq.write_table(samples, out / "samples.parquet", **options)
    counts = {"subjects": len(cohort), "days": days, "samples": samples.num_rows,
              "episodes": len(episode_rows["kind"])}
    (out / "DATASHEET.md").write_text(datasheet(cohort, days, seed, counts, episode_rows))
    return counts


def datasheet(cohort, days, seed, counts, episode_rows) -> str:
    kinds: dict[str, int] = {}
    for kind in episode_rows["kind"]:
        kinds[kind] = kinds.get(kind, 0) + 1
    types: dict[int, int] = {}
    for s in cohort:
        types[s.skin_type] = types.get(s.skin_type, 0) + 1
    lines = [
        "# Datasheet: dermtwin virtual cohort",
        "",
        f"Generated by `python -m simulation.cohort --subjects {len(cohort)} --days {days} "
        f"--seed {seed}` (simulation/cohort.py). **Synthetic**: no person's data; every",
        "reading comes from sensor_drivers/environment_model.py plus the effects named in",
        "simulation/cohort.py, each marked with its source or as ASSUMED there.",
        "",
        "## Motivation",
        "To evaluate and compare the twin's models (temperature anomaly, UV forecast, hydration",
        "trend) against known truth, reproducibly, before any real wearer is involved.",
        "",
        "## Composition",
        f"- {counts['subjects']} subjects x {days} days; {counts['samples']:,} readings; "
        f"{counts['episodes']} labelled episodes.",
        "- Split: " + ", ".join(f"{sum(s.split == k for s in cohort)} {k}"
                                for k in ("train", "test")) + " (held out: `test`).",
        "- Fitzpatrick skin types: " + ", ".join(f"{k}: {types[k]}" for k in sorted(types)) + ".",
        "- Latitudes 40 S to 60 N, summer (60 %) or winter, longitudes 120 W to 150 E.",
        "- Episodes: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + ".",
        "",
        "## Files",
        "| file | columns |",
        "|---|---|",
        "| subjects.parquet | subject, split, skin_type, med_sed, latitude_deg, longitude_deg, "
        "day_of_year, season, skin_baseline_c, hydration_baseline_au, extra_circadian_c |",
        "| samples.parquet | subject, property (skin_temp_c, uv_index, hydration_au, "
        "battery_pct), t_s (local solar seconds since midnight of day 1), value |",
        "| episodes.parquet | subject, kind, start_s, end_s, magnitude, positive |",
        "",
        "Rates: skin temperature 10 s, hydration 60 s, UV 60 s, battery 300 s.",
        "`positive` marks what a temperature anomaly detector should find (fever, local",
        "inflammation). `magnitude`: skin rise (fever, degC), offset (inflammation, degC),",
        "intensity (exercise), drop (drying, AU), protection factor (sunscreen).",
        "",
        "## Limits",
        "- One body site, one patch; no ambient air temperature channel.",
        "- Episodes are idealised shapes (ramps and first-order responses), not measurements;",
        "  a model that does well here still needs real data before any claim.",
        "- UV: clear-sky Madronich formula x cloud and place factors; no aerosols, no snow.",
        "",
        "Not a medical device.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation.cohort", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=64)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("build/cohort"))
    args = parser.parse_args(argv)
    if args.subjects < 2 or args.days < 1:
        parser.error("--subjects must be at least 2 and --days at least 1")

    def progress(done: int, total: int) -> None:
        print(f"\r  cohort: {done}/{total} subjects", end="" if done < total else "\n",
              file=sys.stderr, flush=True)

    cohort = make_cohort(args.subjects, args.days, args.seed)
    counts = write_cohort(cohort, args.days, args.seed, args.out, progress)
    print(f"{counts['subjects']} subjects x {counts['days']} days: {counts['samples']:,} "
          f"readings, {counts['episodes']} episodes -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
