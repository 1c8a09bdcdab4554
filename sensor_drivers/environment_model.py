"""A seeded physiological/environment model that drives the patch's chip emulators.

Every quantity is a pure function of (seed, parameters, scenario, t_s): the same
answer whatever order or how often it is asked, on CPython and MicroPython alike
(hash-based value noise from skin_model, no stateful RNG). `t_s` is seconds
since local midnight of the first simulated day; local clock time is taken as
solar time (no equation of time, no time zones).

    env = PatchEnvironment(seed=7, latitude_deg=45.0, day_of_year=172)
    env.set_location("indoor", 0, 9 * 3600)           # outdoor is the default
    env.set_clouds("overcast", 13 * 3600, 15 * 3600)
    env.add_exercise(17 * 3600, 45 * 60, intensity=0.8)
    env.apply_moisturiser(21 * 3600)
    env.set_inflammation(2.2, start_s=30 * 3600)
    env.uv_index_at(12 * 3600), env.skin_temp_c_at(t), env.capacitance_pf_at(t),
    env.battery_soc_pct_at(t), env.battery_volts_at(t)

Sources and assumptions (numbers a modeller chose are marked ASSUMED):

UV index
- Clear-sky UVI: Madronich S. (2007) "Analytic formula for the clear-sky UV
  index", Photochem. Photobiol. 83:1537-1538: UVI = 12.5 mu0^2.42 (ozone/300 DU)^-1.23,
  mu0 = cos(solar zenith angle). It gives ~11-12 at a midsummer noon at 35-45 deg N
  and ~0.6 at a midwinter noon at 50 deg N, in line with the WHO Global Solar UV
  Index guide (2002) and observed UVI climatology (midsummer noon 10-12 at mid
  latitudes; winter 0-2 north of 50 deg).
- Solar declination: Cooper P.I. (1969), Solar Energy 12:333:
  23.45 deg x sin(360 deg x (284 + n) / 365).
- Altitude: WHO (2002): UV rises about 10 % per 1000 m.
- Clouds: cloud modification factors from Calbo J., Pages D., Gonzalez J.-A.
  (2005) "Empirical studies of cloud effects on UV radiation: a review", Rev.
  Geophys. 43, RG2002: scattered clouds ~0.9, broken ~0.7, overcast 0.2-0.5.
  The presets below pick values inside those ranges (ASSUMED).
- Shade: a tree or parasol leaves the diffuse sky, roughly half of the erythemal
  UV at high sun (Parisi A.V., Kimlin M.G. et al. on shade UV): 0.4 (ASSUMED).
- Indoors: window glass blocks UVB; erythemally weighted UV indoors is a few
  percent of outdoors at most: 0.02 (ASSUMED).

Skin temperature
- SkinTemperatureModel (baseline, circadian, drift, local inflammation ramp).
  Local inflammation is the >= 2 degC (clinical cue > 2.2 degC) offset of design.md §4.
- Exercise: +1.0 degC at full intensity, first-order with 10 min rise, 15 min
  decay (ASSUMED; skin over working muscle warms by ~1-2 degC, torso skin can cool
  with evaporating sweat).
- Fever: skin follows 0.8 of the core-temperature rise (ASSUMED), with 1 h ramps.

Hydration (Corneometer arbitrary units, AU, 0..120; CM 825 range)
- States: < 30 very dry, 30-45 dry, >= 45 normal (design.md §4, Courage+Khazaka).
- Baseline 50 AU by default with +-3 AU slow drift (ASSUMED, a normal forearm).
- Moisturiser: +25 AU, 5 min rise, 3 h decay (ASSUMED; single emollient
  applications raise Corneometer readings by 10-30 AU for several hours,
  Loden M. (2003) Am. J. Clin. Dermatol. 4:771).
- Sweat during exercise: up to +30 AU at full intensity after a 5 min onset,
  10 min rise, 20 min evaporation after the bout (ASSUMED).
- Drying (dry air, washing): a drop of `drop_au` with 2 h time constant,
  recovering with 4 h after the period (ASSUMED).
- Electrode: capacitance = offset + AU / (gain x (1 + tempco (T - 32 degC))), the
  inverse of the gateway's reference hydration model (models_onnx/build_models.py:
  10 pF at 0 AU, 20 AU/pF, water permittivity tempco 0.00454 /K), so the gateway
  recovers the model's AU from the FDC1004 reading.

Battery (1-cell LiPo)
- SOC falls linearly with the average load current (coulomb counting);
  defaults 100 mAh and 0.35 mA average (ASSUMED: BLE connection + sensors), about 12 days.
- Open-circuit voltage: Chen M., Rincon-Mora G.A. (2006) "Accurate electrical
  battery model capable of predicting runtime and I-V performance", IEEE Trans.
  Energy Convers. 21(2):504, fitted polymer Li-ion cell:
  V_oc = -1.031 e^(-35 s) + 3.685 + 0.2156 s - 0.1178 s^2 + 0.3201 s^3, s = SOC 0..1,
  minus I x R with R = 0.15 ohm (ASSUMED small-cell internal resistance).
"""

import math

from sensor_drivers.skin_model import SkinTemperatureModel, _smooth_noise

SECONDS_PER_DAY = 86400
SECONDS_PER_HOUR = 3600.0
_DEG = math.pi / 180.0

# --- UV ---------------------------------------------------------------------------
MADRONICH_UVI_SCALE = 12.5
MADRONICH_MU_EXPONENT = 2.42
MADRONICH_OZONE_EXPONENT = -1.23
REFERENCE_OZONE_DU = 300.0
COOPER_TILT_DEG = 23.45
UV_INCREASE_PER_KM = 0.10
LOCATION_UV_FACTOR = {"outdoor": 1.0, "shade": 0.4, "indoor": 0.02}
# cloud modification factor, and the amplitude of its hashed flicker
CLOUD_PRESETS = {
    "clear": (1.0, 0.0),
    "scattered": (0.9, 0.08),
    "broken": (0.7, 0.2),
    "overcast": (0.3, 0.05),
}
CLOUD_FLICKER_KNOT_S = 300

# --- skin temperature ----------------------------------------------------------------
EXERCISE_SKIN_RISE_C = 1.0
EXERCISE_SKIN_RISE_TAU_S = 600.0
EXERCISE_SKIN_DECAY_TAU_S = 900.0
FEVER_SKIN_COUPLING = 0.8
FEVER_RAMP_S = 3600.0

# --- hydration -------------------------------------------------------------------------
CORNEOMETER_MAX_AU = 120.0
BASELINE_HYDRATION_AU = 50.0
HYDRATION_DRIFT_AU = 3.0
HYDRATION_DRIFT_KNOT_S = 5400
MOISTURISER_BOOST_AU = 25.0
MOISTURISER_RISE_TAU_S = 300.0
MOISTURISER_DECAY_TAU_S = 3 * 3600.0
SWEAT_MAX_AU = 30.0
SWEAT_ONSET_S = 300.0
SWEAT_RISE_TAU_S = 600.0
SWEAT_EVAPORATION_TAU_S = 1200.0
DRYING_TAU_S = 2 * 3600.0
DRYING_RECOVERY_TAU_S = 4 * 3600.0
# The gateway's reference hydration model (models_onnx/build_models.py).
ELECTRODE_OFFSET_PF = 10.0
ELECTRODE_GAIN_AU_PER_PF = 20.0
ELECTRODE_REF_TEMP_C = 32.0
WATER_PERMITTIVITY_TEMPCO_PER_K = 0.00454

# --- battery ----------------------------------------------------------------------------
BATTERY_CAPACITY_MAH = 100.0
BATTERY_AVERAGE_CURRENT_MA = 0.35
BATTERY_INTERNAL_RESISTANCE_OHM = 0.15
_NOISE_SALT_CLOUD = 11
_NOISE_SALT_HYDRATION = 12


# --- pure helpers ---------------------------------------------------------------------------
def solar_declination_rad(day_of_year):
    return COOPER_TILT_DEG * _DEG * math.sin(2.0 * math.pi * (284 + day_of_year) / 365.0)


def cos_solar_zenith(latitude_deg, day_of_year, solar_hour):
    """cos(solar zenith angle) for local solar time `solar_hour` (0..24)."""
    latitude = latitude_deg * _DEG
    declination = solar_declination_rad(day_of_year)
    hour_angle = (solar_hour - 12.0) * 15.0 * _DEG
    return math.sin(latitude) * math.sin(declination) + math.cos(latitude) * math.cos(
        declination
    ) * math.cos(hour_angle)


def clear_sky_uvi(cos_zenith, ozone_du=REFERENCE_OZONE_DU, altitude_m=0.0):
    """Madronich (2007) clear-sky UV index; 0 with the sun below the horizon."""
    if cos_zenith <= 0.0:
        return 0.0
    return (
        MADRONICH_UVI_SCALE
        * cos_zenith**MADRONICH_MU_EXPONENT
        * (ozone_du / REFERENCE_OZONE_DU) ** MADRONICH_OZONE_EXPONENT
        * (1.0 + UV_INCREASE_PER_KM * altitude_m / 1000.0)
    )


def first_order_pulse(t_s, start_s, end_s, rise_tau_s, decay_tau_s):
    """Response (0..1) of a first-order system to a unit step held over [start, end)."""
    if t_s < start_s:
        return 0.0
    if t_s < end_s:
        return 1.0 - math.exp(-(t_s - start_s) / rise_tau_s)
    at_end = 1.0 - math.exp(-(end_s - start_s) / rise_tau_s)
    return at_end * math.exp(-(t_s - end_s) / decay_tau_s)


def trapezoid(t_s, start_s, end_s, ramp_s):
    """0 -> 1 over ramp_s from start_s, held, 1 -> 0 over ramp_s ending at end_s."""
    if t_s <= start_s or t_s >= end_s:
        return 0.0
    if ramp_s <= 0:
        return 1.0
    return min(1.0, (t_s - start_s) / ramp_s, (end_s - t_s) / ramp_s)


def open_circuit_volts(soc_pct):
    """Chen & Rincon-Mora (2006) polymer Li-ion OCV(SOC)."""
    s = min(max(soc_pct / 100.0, 0.0), 1.0)
    return -1.031 * math.exp(-35.0 * s) + 3.685 + 0.2156 * s - 0.1178 * s * s + 0.3201 * s * s * s


def _in(interval_list, t_s):
    """The value of the last interval (start, end, value) containing t_s, else None."""
    found = None
    for start_s, end_s, value in interval_list:
        if start_s <= t_s < end_s:
            found = value
    return found


# --- the model -----------------------------------------------------------------------------------
class PatchEnvironment:
    """Seeded environment of one patch wearer; scenario controls add events.

    Parameters: `latitude_deg` (north positive), `day_of_year` of t_s = 0 (1..365),
    `ozone_du`, `altitude_m`, `default_location` ("outdoor", "shade", "indoor"),
    `skin_baseline_c`, `hydration_baseline_au`, battery `capacity_mah`,
    `average_current_ma` and `initial_soc_pct`.
    """

    def __init__(
        self,
        seed=1,
        latitude_deg=45.0,
        day_of_year=172,
        ozone_du=REFERENCE_OZONE_DU,
        altitude_m=0.0,
        default_location="outdoor",
        skin_baseline_c=33.5,
        hydration_baseline_au=BASELINE_HYDRATION_AU,
        capacity_mah=BATTERY_CAPACITY_MAH,
        average_current_ma=BATTERY_AVERAGE_CURRENT_MA,
        initial_soc_pct=100.0,
    ):
        if default_location not in LOCATION_UV_FACTOR:
            raise ValueError(f"unknown location {default_location!r}")
        self.seed = seed
        self.latitude_deg = latitude_deg
        self.day_of_year = day_of_year
        self.ozone_du = ozone_du
        self.altitude_m = altitude_m
        self.default_location = default_location
        self.skin = SkinTemperatureModel(seed=seed, baseline_c=skin_baseline_c)
        self.hydration_baseline_au = hydration_baseline_au
        self.capacity_mah = capacity_mah
        self.average_current_ma = average_current_ma
        self.initial_soc_pct = initial_soc_pct
        self._locations = []
        self._clouds = []
        self._exercise = []
        self._fevers = []
        self._moisturiser = []
        self._drying = []

    # --- scenario controls ----------------------------------------------------------
    def set_location(self, kind, start_s, end_s):
        """Be `kind` ("outdoor", "shade", "indoor") over [start_s, end_s)."""
        if kind not in LOCATION_UV_FACTOR:
            raise ValueError(f"unknown location {kind!r}")
        self._locations.append((start_s, end_s, kind))

    def set_clouds(self, preset, start_s, end_s):
        """Clouds over [start_s, end_s): "clear", "scattered", "broken", "overcast",
        or a cloud modification factor (0..1.2)."""
        if isinstance(preset, str):
            if preset not in CLOUD_PRESETS:
                raise ValueError(f"unknown cloud preset {preset!r}")
            factor, flicker = CLOUD_PRESETS[preset]
        else:
            factor, flicker = float(preset), 0.0
        self._clouds.append((start_s, end_s, (factor, flicker)))

    def add_exercise(self, start_s, duration_s, intensity=1.0):
        """An exercise bout: skin warms and sweat raises surface hydration."""
        self._exercise.append((start_s, start_s + duration_s, min(max(intensity, 0.0), 1.0)))

    def set_fever(self, core_rise_c, start_s, duration_s, ramp_s=FEVER_RAMP_S):
        self._fevers.append((start_s, start_s + duration_s, core_rise_c, ramp_s))

    def set_inflammation(self, offset_c, start_s=0.0, rise_s=3600):
        """Local inflammation under the patch (>= 2 degC is the clinical cue)."""
        self.skin.set_inflammation(offset_c, start_s, rise_s)

    def apply_moisturiser(self, start_s, boost_au=MOISTURISER_BOOST_AU):
        self._moisturiser.append((start_s, boost_au))

    def add_drying(self, start_s, end_s, drop_au=15.0):
        """Dry air or washing: hydration falls by up to drop_au, recovers afterwards."""
        self._drying.append((start_s, end_s, drop_au))

    # --- UV ------------------------------------------------------------------------------
    def location_at(self, t_s):
        kind = _in(self._locations, t_s)
        return kind if kind is not None else self.default_location

    def clear_sky_uvi_at(self, t_s):
        day = self.day_of_year + int(t_s // SECONDS_PER_DAY)
        day = (day - 1) % 365 + 1
        solar_hour = (t_s % SECONDS_PER_DAY) / SECONDS_PER_HOUR
        mu0 = cos_solar_zenith(self.latitude_deg, day, solar_hour)
        return clear_sky_uvi(mu0, self.ozone_du, self.altitude_m)

    def cloud_factor_at(self, t_s):
        clouds = _in(self._clouds, t_s)
        if clouds is None:
            return 1.0
        factor, flicker = clouds
        if flicker:
            factor *= 1.0 + flicker * _smooth_noise(
                self.seed, _NOISE_SALT_CLOUD, t_s, CLOUD_FLICKER_KNOT_S
            )
        return max(factor, 0.0)

    def uv_index_at(self, t_s):
        """UV index reaching the patch (sun position x clouds x location)."""
        clear = self.clear_sky_uvi_at(t_s)
        if clear == 0.0:
            return 0.0
        return clear * self.cloud_factor_at(t_s) * LOCATION_UV_FACTOR[self.location_at(t_s)]

    # --- skin temperature ------------------------------------------------------------------
    def exercise_level_at(self, t_s, rise_tau_s, decay_tau_s, delay_s=0.0):
        level = 0.0
        for start_s, end_s, intensity in self._exercise:
            level += intensity * first_order_pulse(
                t_s, start_s + delay_s, max(end_s, start_s + delay_s), rise_tau_s, decay_tau_s
            )
        return level

    def fever_c_at(self, t_s):
        rise = 0.0
        for start_s, end_s, core_rise_c, ramp_s in self._fevers:
            rise += core_rise_c * trapezoid(t_s, start_s, end_s, ramp_s)
        return FEVER_SKIN_COUPLING * rise

    def skin_temp_c_at(self, t_s):
        exercise = EXERCISE_SKIN_RISE_C * self.exercise_level_at(
            t_s, EXERCISE_SKIN_RISE_TAU_S, EXERCISE_SKIN_DECAY_TAU_S
        )
        return self.skin.celsius_at(t_s) + exercise + self.fever_c_at(t_s)

    # --- hydration -------------------------------------------------------------------------------
    def hydration_au_at(self, t_s):
        """Corneometer-equivalent hydration (AU, 0..120)."""
        au = self.hydration_baseline_au + HYDRATION_DRIFT_AU * _smooth_noise(
            self.seed, _NOISE_SALT_HYDRATION, t_s, HYDRATION_DRIFT_KNOT_S
        )
        for start_s, boost_au in self._moisturiser:
            since_s = t_s - start_s
            if since_s > 0:
                au += (
                    boost_au
                    * (1.0 - math.exp(-since_s / MOISTURISER_RISE_TAU_S))
                    * math.exp(-since_s / MOISTURISER_DECAY_TAU_S)
                )
        au += SWEAT_MAX_AU * self.exercise_level_at(
            t_s, SWEAT_RISE_TAU_S, SWEAT_EVAPORATION_TAU_S, SWEAT_ONSET_S
        )
        for start_s, end_s, drop_au in self._drying:
            au -= drop_au * first_order_pulse(
                t_s, start_s, end_s, DRYING_TAU_S, DRYING_RECOVERY_TAU_S
            )
        return min(max(au, 0.0), CORNEOMETER_MAX_AU)

    def capacitance_pf_at(self, t_s):
        """Electrode capacitance the FDC1004 sees (inverse of the gateway's model)."""
        temp_factor = 1.0 + WATER_PERMITTIVITY_TEMPCO_PER_K * (
            self.skin_temp_c_at(t_s) - ELECTRODE_REF_TEMP_C
        )
        return ELECTRODE_OFFSET_PF + self.hydration_au_at(t_s) / (
            ELECTRODE_GAIN_AU_PER_PF * temp_factor
        )

    # --- battery -------------------------------------------------------------------------------------
    def battery_soc_pct_at(self, t_s):
        used_pct = 100.0 * self.average_current_ma * (max(t_s, 0.0) / SECONDS_PER_HOUR)
        used_pct /= self.capacity_mah
        return min(max(self.initial_soc_pct - used_pct, 0.0), 100.0)

    def battery_volts_at(self, t_s):
        drop_v = self.average_current_ma / 1000.0 * BATTERY_INTERNAL_RESISTANCE_OHM
        return open_circuit_volts(self.battery_soc_pct_at(t_s)) - drop_v


def attach_patch_chips(bus, env, time_s):
    """Attach the four chip emulators to `bus`, fed by `env` at `time_s()` seconds.

    Returns them as a dict by chip name. Emulators are imported here so the model
    itself does not depend on them.
    """
    from sensor_drivers.emulators.fdc1004 import FDC1004Emulator
    from sensor_drivers.emulators.ltr390 import LTR390Emulator
    from sensor_drivers.emulators.max17048 import MAX17048Emulator
    from sensor_drivers.emulators.tmp117 import TMP117Emulator

    chips = {
        "TMP117": TMP117Emulator(lambda: env.skin_temp_c_at(time_s())),
        "LTR390": LTR390Emulator(lambda: env.uv_index_at(time_s())),
        "FDC1004": FDC1004Emulator(lambda: env.capacitance_pf_at(time_s())),
        "MAX17048": MAX17048Emulator(
            lambda: env.battery_volts_at(time_s()), lambda: env.battery_soc_pct_at(time_s())
        ),
    }
    for chip in chips.values():
        bus.attach(chip)
    return chips
