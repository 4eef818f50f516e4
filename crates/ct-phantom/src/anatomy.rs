//! The patient: one draw per case of what the scan covers, the body and its outline, the lungs
//! with the diaphragm's dome, the mediastinum, the bones, the abdomen's organs, the arms and the
//! table; and the tissue at any point (mm; x to the patient's right, y anterior, z superior).

use std::f64::consts::PI;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Hounsfield values of the tissues drawn.
pub(crate) mod hu {
    pub const AIR: f32 = -1000.0;
    pub const FAT: f32 = -100.0;
    pub const MUSCLE: f32 = 45.0;
    pub const SOFT: f32 = 35.0;
    pub const LIVER: f32 = 58.0;
    pub const SPLEEN: f32 = 48.0;
    pub const KIDNEY: f32 = 32.0;
    pub const FLUID: f32 = 12.0;
    /// Mesentery: fat with vessels and lymph nodes between the bowel loops.
    pub const MESENTERY: f32 = -60.0;
    /// The mediastinum's and the pericardium's fat, around the heart and the great vessels.
    pub const MEDIASTINAL_FAT: f32 = -90.0;
    pub const LYMPH_NODE: f32 = 38.0;
    pub const LUNG: f32 = -860.0;
    pub const AIRWAY: f32 = -980.0;
    pub const TUMOUR: f32 = 32.0;
    pub const CANCELLOUS: f32 = 320.0;
    pub const CORTICAL: f32 = 850.0;
    pub const RIB: f32 = 620.0;
    pub const DISC: f32 = 85.0;
    pub const CSF: f32 = 15.0;
    /// The table's carbon-fibre shell and its foam core.
    pub const TABLE_SHELL: f32 = 250.0;
    pub const FOAM: f32 = -950.0;
}

/// What a voxel's tissue is, as the later drawing steps need to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Region {
    Other = 0,
    /// Inside a lung: vessels, airways, tumours and opacities go here.
    Lung = 1,
    /// The abdomen's free space, where the bowel lies.
    Belly = 2,
    /// The mediastinum's fat, where lymph nodes lie.
    Mediastinum = 3,
}

/// How much of the patient a phantom's scan covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    /// The chest with a few centimetres of abdomen, the body whole in the image.
    Chest,
    /// Neck to pelvis, as many of the MSD CTs.
    Trunk,
    /// Cut to the lungs: the body's sides beyond the image, the apex or base sometimes too.
    Tight,
}

/// Per-case anatomy (mm).
pub(crate) struct Anatomy {
    pub field: Field,
    /// Scan length along z and in-plane field of view.
    pub z_extent: f64,
    pub fov: f64,
    pub body: [f64; 2],
    /// The body outline's harmonics 2..=5 as amplitude x (cos, sin) of their phase: no patient
    /// is an ellipse.
    outline: [(f64, f64); 4],
    /// The widest the outline factor gets (z's wobble and every harmonic at its peak).
    outline_reach: f64,
    pub fat: f64,
    pub lung_base: f64,
    pub lung_top: f64,
    pub dome: f64,
    pub lung_centre: [f64; 2],
    pub lung_semi: [f64; 2],
    pub heart_centre: [f64; 3],
    pub heart_semi: [f64; 3],
    pub spine_y: f64,
    rib_pitch: f64,
    rib_phase: f64,
    pub carina_z: f64,
    /// Blood: about 40 HU, or 120-300 with intravenous contrast.
    pub blood: f32,
    /// Lung texture: plane waves (wave vector, phase, amplitude in HU).
    pub waves: Vec<([f64; 3], f64, f64)>,
    /// Arms down beside the chest: centre offset beyond the body's side, semi-axes.
    arms: Option<([f64; 2], [f64; 2])>,
    /// The table's top below the body, its thickness and half width.
    table: Option<(f64, f64, f64)>,
    /// Dependent atelectasis at the lung bases: depth (mm) and height above the floor (mm).
    atelectasis: Option<(f64, f64)>,
    stomach: ([f64; 3], [f64; 3], f64),
    liver_height: f64,
}

/// Where a point lies within a lung.
struct LungPoint {
    /// Normalised distance from the lung's axis in its footprint (0 centre, 1 edge).
    edge: f64,
    /// Height above the lung's floor (mm).
    above_floor: f64,
}

impl Field {
    /// The first draw of a case.
    pub(crate) fn sample(rng: &mut ChaCha8Rng) -> Field {
        match rng.random_range(0.0..1.0) {
            u if u < 0.55 => Field::Chest,
            u if u < 0.8 => Field::Trunk,
            _ => Field::Tight,
        }
    }
}

impl Anatomy {
    pub fn sample(rng: &mut ChaCha8Rng) -> Anatomy {
        let field = Field::sample(rng);
        let bx = rng.random_range(145.0..172.0);
        let by = bx * rng.random_range(0.66..0.76);
        let fat = rng.random_range(8.0..18.0);
        let lung_height: f64 = rng.random_range(170.0..240.0);
        let (above, below) = match field {
            Field::Chest => (rng.random_range(8.0..25.0), rng.random_range(45.0..70.0)),
            Field::Trunk => (rng.random_range(40.0..80.0), rng.random_range(190.0..280.0)),
            Field::Tight => (rng.random_range(-10.0..8.0), rng.random_range(-10.0..15.0)),
        };
        let z_extent = lung_height + above + below;
        let lung_top = z_extent / 2.0 - above;
        let lung_base = lung_top - lung_height;
        let lung_centre = [bx * 0.45, -0.04 * by];
        let lung_semi = [bx * 0.37, by * 0.74];
        let fov = match field {
            Field::Tight => 2.0 * (lung_centre[0] + lung_semi[0]) * rng.random_range(1.0..1.1),
            _ => 2.0 * bx * rng.random_range(1.12..1.3),
        };
        let spine_y = -by + fat + 40.0;
        let waves = (0..10)
            .map(|_| {
                let wavelength: f64 = rng.random_range(6.0..30.0);
                let theta = rng.random_range(0.0..PI);
                let phi = rng.random_range(0.0..2.0 * PI);
                let k = 2.0 * PI / wavelength;
                (
                    [
                        k * theta.sin() * phi.cos(),
                        k * theta.sin() * phi.sin(),
                        k * theta.cos(),
                    ],
                    rng.random_range(0.0..2.0 * PI),
                    rng.random_range(3.0..7.0),
                )
            })
            .collect();
        let outline = [0; 4].map(|_| {
            let amplitude = rng.random_range(0.0..0.025);
            let (sin, cos) = rng.random_range(0.0..2.0 * PI).sin_cos();
            (amplitude * cos, amplitude * sin)
        });
        let span = lung_top - lung_base;
        let blood = if rng.random_bool(0.5) {
            42.0
        } else {
            rng.random_range(120.0..300.0)
        };
        let arms = (field != Field::Tight && rng.random_bool(0.35)).then(|| {
            (
                [rng.random_range(6.0..25.0), -0.05 * by],
                [rng.random_range(36.0..46.0), rng.random_range(44.0..56.0)],
            )
        });
        let table = (field != Field::Tight && rng.random_bool(0.8)).then(|| {
            (
                -by * 1.04 - rng.random_range(3.0..15.0),
                rng.random_range(30.0..50.0),
                bx * rng.random_range(0.95..1.1),
            )
        });
        let atelectasis = rng
            .random_bool(0.3)
            .then(|| (rng.random_range(6.0..18.0), rng.random_range(15.0..45.0)));
        let stomach_semi = [
            rng.random_range(40.0..60.0),
            rng.random_range(30.0..45.0),
            rng.random_range(35.0..55.0),
        ];
        let stomach = (
            [-0.42 * bx, 0.12 * by, lung_base - 0.6 * stomach_semi[2]],
            stomach_semi,
            // The gas's level (supine: gas rises anterior), as a fraction of the height.
            rng.random_range(0.1..0.8),
        );
        Anatomy {
            field,
            z_extent,
            fov,
            body: [bx, by],
            outline,
            outline_reach: 1.03 + outline.iter().map(|(a, b)| hypot(*a, *b)).sum::<f64>(),
            fat,
            lung_base,
            lung_top,
            dome: rng.random_range(15.0..30.0),
            lung_centre,
            lung_semi,
            heart_centre: [-0.16 * bx, 0.16 * by, lung_base + 0.22 * span],
            heart_semi: [0.3 * bx, 0.42 * by, 0.25 * span],
            spine_y,
            rib_pitch: rng.random_range(24.0..30.0),
            rib_phase: rng.random_range(0.0..1.0),
            carina_z: lung_base + 0.62 * span,
            blood,
            waves,
            arms,
            table,
            atelectasis,
            stomach,
            liver_height: rng.random_range(120.0..170.0),
        }
    }

    /// The lung texture at `p` (HU around 0), for the few voxels drawn off the grid.
    pub fn texture(&self, p: [f64; 3]) -> f64 {
        self.waves
            .iter()
            .map(|(k, phase, amp)| amp * (k[0] * p[0] + k[1] * p[1] + k[2] * p[2] + phase).sin())
            .sum()
    }

    pub fn in_heart(&self, p: [f64; 3]) -> bool {
        self.heart_radius(p).is_some()
    }

    /// The normalised radius (≤ 1) of a point inside the heart's ellipsoid.
    fn heart_radius(&self, [x, y, z]: [f64; 3]) -> Option<f64> {
        let c = self.heart_centre;
        let s = self.heart_semi;
        let r2 =
            ((x - c[0]) / s[0]).powi(2) + ((y - c[1]) / s[1]).powi(2) + ((z - c[2]) / s[2]).powi(2);
        (r2 <= 1.0).then(|| r2.sqrt())
    }

    fn in_mediastinum(&self, [x, y, _]: [f64; 3]) -> bool {
        let [bx, by] = self.body;
        (x / (0.13 * bx)).powi(2) + ((y - 0.1 * by) / (0.62 * by)).powi(2) <= 1.0
    }

    pub fn aorta_centre(&self) -> [f64; 2] {
        [-24.0, self.spine_y + 22.0]
    }

    pub fn trachea_centre(&self) -> [f64; 2] {
        [0.0, self.spine_y + 42.0]
    }

    /// Height (z) of the diaphragm under the lungs at (x, y): the dome rises under each lung.
    pub fn floor(&self, x: f64, y: f64) -> f64 {
        let [cx, cy] = self.lung_centre;
        let [ax, ay] = self.lung_semi;
        let d2 = ((x.abs() - cx) / ax).powi(2) + ((y - cy) / ay).powi(2);
        self.lung_base + self.dome * (1.0 - d2).max(0.0)
    }

    fn lung_point(&self, p: [f64; 3]) -> Option<LungPoint> {
        let [x, y, z] = p;
        let [cx, cy] = self.lung_centre;
        let [ax, ay] = self.lung_semi;
        let d2 = ((x.abs() - cx) / ax).powi(2) + ((y - cy) / ay).powi(2);
        if d2 > 1.0 {
            return None;
        }
        let floor = self.lung_base + self.dome * (1.0 - d2);
        let t = (z - floor) / (self.lung_top - floor);
        if !(0.0..=1.0).contains(&t) {
            return None;
        }
        let size = if t < 0.3 {
            1.0 - 0.2 * (0.3 - t) / 0.3
        } else {
            (1.0 - ((t - 0.3) / 0.7).powi(2)).sqrt()
        };
        let e = ((x.abs() - cx) / (ax * size)).powi(2) + ((y - cy) / (ay * size)).powi(2);
        if e > 1.0 || self.in_heart(p) || self.in_mediastinum(p) {
            return None;
        }
        let [axx, axy] = self.aorta_centre();
        let aorta = hypot(x - axx, y - axy) <= 16.0;
        let spine = hypot(x, y - self.spine_y) <= 24.0;
        (!(aorta || spine)).then(|| LungPoint {
            edge: e.sqrt(),
            above_floor: z - floor,
        })
    }

    /// Lung membership at a point: inside one of the two lung shapes, above the diaphragm dome,
    /// below the apex, clear of heart, mediastinum, aorta and spine.
    pub fn in_lung(&self, p: [f64; 3]) -> bool {
        self.lung_point(p).is_some()
    }

    /// The body's outline factor in in-plane direction (`cos`, `sin`) at height `z`; the
    /// harmonics come from the direction by the angle-addition recurrence, no trigonometry per
    /// voxel.
    fn outline(&self, (cos, sin): (f64, f64), z: f64) -> f64 {
        let mut harmonics = 0.0;
        let (mut cn, mut sn) = (cos, sin);
        for (a, b) in &self.outline {
            (cn, sn) = (cn * cos - sn * sin, sn * cos + cn * sin);
            harmonics += a * cn - b * sn;
        }
        1.0 + 0.03 * (z / 45.0).sin() + harmonics
    }

    /// The body's semi-axes and centre at height `z`: the neck above the shoulders is narrower.
    fn body_at(&self, z: f64) -> ([f64; 2], f64) {
        let [bx, by] = self.body;
        let s = ((z - self.lung_top - 15.0) / 45.0).clamp(0.0, 1.0);
        let neck = [bx * (1.0 - 0.58 * s), by * (1.0 - 0.35 * s)];
        (neck, (self.spine_y + 30.0) * s)
    }

    /// Tissue value (HU, before vessels, lesions, blur and noise) and region at `p`; `texture`
    /// is the lung texture there.
    pub fn tissue(&self, p: [f64; 3], texture: impl Fn() -> f64) -> (f32, Region) {
        let [x, y, z] = p;
        let ([bx, by], centre_y) = self.body_at(z);
        let (u, v) = (x / bx, (y - centre_y) / by);
        let rho = hypot(u, v);
        // Beyond the widest the outline gets: outside, no need to work the outline out.
        if rho > self.outline_reach {
            return (self.outside(p), Region::Other);
        }
        let direction = if rho > 0.0 {
            (u / rho, v / rho)
        } else {
            (1.0, 0.0)
        };
        let wobble = self.outline(direction, z);
        if rho > wobble {
            return (self.outside(p), Region::Other);
        }
        let inner = hypot(
            x / (bx * wobble - self.fat),
            (y - centre_y) / (by * wobble - self.fat),
        );
        if inner > 1.0 {
            return (hu::FAT, Region::Other);
        }
        if let Some(v) = self.spine(p) {
            return (v, Region::Other);
        }
        let in_thorax = z > self.lung_base - 30.0 && z < self.lung_top + 15.0;
        // ribs: a band just inside the muscle, sloping down toward the front, outside the pleura
        let (rx, ry) = (bx * wobble - self.fat - 7.0, by * wobble - self.fat - 7.0);
        let rib_rho = hypot(x / rx, (y - centre_y) / ry);
        if in_thorax
            && (rib_rho - 1.0).abs() * rx.min(ry) < 4.5
            && !(x.abs() < 22.0 && y > 0.0)
            && !self.in_lung(p)
        {
            let along = (z + 14.0 * (1.0 + y / ry)) / self.rib_pitch + self.rib_phase;
            if along - along.floor() < 0.32 {
                return (hu::RIB, Region::Other);
            }
        }
        // sternum
        if in_thorax
            && z > self.lung_base + 20.0
            && (x / 15.0).powi(2) + ((y - (by - self.fat - 14.0)) / 6.0).powi(2) <= 1.0
        {
            return (hu::RIB, Region::Other);
        }
        // trachea above the carina, the oesophagus behind it and to the left
        let [tx, ty] = self.trachea_centre();
        let r_trachea = hypot(x - tx, y - ty);
        if z > self.carina_z && r_trachea <= 10.0 {
            return (
                if r_trachea <= 8.0 { hu::AIR } else { hu::SOFT },
                Region::Other,
            );
        }
        if z > self.lung_base - 20.0 && hypot(x + 8.0, y - (ty - 16.0)) <= 7.0 {
            return (hu::SOFT, Region::Other);
        }
        let [axx, axy] = self.aorta_centre();
        if z > self.lung_base - 220.0 && z < self.carina_z + 10.0 && hypot(x - axx, y - axy) <= 12.0
        {
            return (self.blood, Region::Other);
        }
        if let Some(lung) = self.lung_point(p) {
            let gravity = -40.0 * (y - self.lung_centre[1]) / self.lung_semi[1];
            let mut value = f64::from(hu::LUNG) + texture() + gravity;
            if let Some((depth, height)) = self.atelectasis {
                // Collapsed lung where it is lowest: posterior, just above the diaphragm.
                let posterior = (1.0 - lung.edge) * self.lung_semi[1] < depth
                    && y < self.lung_centre[1] - 0.3 * self.lung_semi[1];
                if posterior && lung.above_floor < height {
                    value = -50.0 + 0.5 * texture();
                }
            }
            return (value as f32, Region::Lung);
        }
        if let Some(r) = self.heart_radius(p) {
            // The epicardial fat around the heart, thicker at its apex and base.
            let fat = 0.93 - 0.04 * (p[2] - self.heart_centre[2]).abs() / self.heart_semi[2];
            return if r > fat {
                (hu::MEDIASTINAL_FAT, Region::Mediastinum)
            } else {
                (self.blood, Region::Other)
            };
        }
        if self.in_mediastinum(p) && in_thorax {
            return (hu::MEDIASTINAL_FAT, Region::Mediastinum);
        }
        let floor = self.floor(x, y);
        // Below the diaphragm, its muscle and the fat under it: 12 mm.
        if z < floor - 12.0 {
            let value = self.abdomen(p);
            let region = if value == hu::MESENTERY {
                Region::Belly
            } else {
                Region::Other
            };
            return (value, region);
        }
        (hu::MUSCLE, Region::Other)
    }

    /// Below the diaphragm: liver, stomach with its gas, spleen, kidneys, pelvis; the rest
    /// mesentery (where the bowel goes) or muscle.
    fn abdomen(&self, p: [f64; 3]) -> f32 {
        let [x, y, z] = p;
        let [bx, by] = self.body;
        let base = self.lung_base;
        let (c, s, level) = self.stomach;
        let e = [0, 1, 2]
            .map(|d| ((p[d] - c[d]) / s[d]).powi(2))
            .iter()
            .sum::<f64>();
        if e <= 1.0 {
            let wall = e > 0.85;
            return if wall {
                hu::SOFT
            } else if y > c[1] + s[1] * (1.0 - 2.0 * level) {
                hu::AIR
            } else {
                hu::FLUID
            };
        }
        if x > -0.3 * bx && z > base - self.liver_height + 0.15 * (x - bx).abs() {
            return hu::LIVER;
        }
        let spleen = ((x + 0.55 * bx) / 30.0).powi(2)
            + ((y + 0.35 * by) / 45.0).powi(2)
            + ((z - (base - 20.0)) / 50.0).powi(2);
        if spleen <= 1.0 {
            return hu::SPLEEN;
        }
        for side in [-1.0, 1.0] {
            let kidney = ((x - side * 0.35 * bx) / 28.0).powi(2)
                + ((y - (self.spine_y + 12.0)) / 24.0).powi(2)
                + ((z - (base - 95.0)) / 55.0).powi(2);
            if kidney <= 1.0 {
                return hu::KIDNEY;
            }
            // iliac wings: a bone shell low in the trunk
            let iliac = ((x - side * 0.5 * bx) / 22.0).powi(2) + ((y + 0.2 * by) / 48.0).powi(2);
            if z < base - 190.0 && iliac <= 1.0 {
                return if iliac > 0.7 {
                    hu::CORTICAL
                } else {
                    hu::CANCELLOUS
                };
            }
        }
        if y < self.spine_y + 15.0 {
            return hu::MUSCLE; // psoas and back muscles
        }
        hu::MESENTERY
    }

    /// Vertebral body with cortex and discs, canal, posterior arch; None off the spine.
    fn spine(&self, [x, y, z]: [f64; 3]) -> Option<f32> {
        let r_body = hypot(x, y - self.spine_y);
        if r_body <= 17.0 {
            let disc = (z / 28.0 - (z / 28.0).floor()) < 0.15;
            return Some(if disc {
                hu::DISC
            } else if r_body > 14.0 {
                hu::CORTICAL
            } else {
                hu::CANCELLOUS
            });
        }
        let r_canal = hypot(x, y - (self.spine_y - 25.0));
        if r_canal <= 7.0 {
            return Some(hu::CSF);
        }
        (r_canal <= 12.0).then_some(hu::CORTICAL)
    }

    /// Outside the body: the arms, the table, air.
    fn outside(&self, [x, y, z]: [f64; 3]) -> f32 {
        let [bx, _] = self.body;
        if let Some(([gap, ay], [sa, sb])) = self.arms
            && z < self.lung_top + 10.0
        {
            let ax = bx + gap + sa;
            let d = hypot((x.abs() - ax) / sa, (y - ay) / sb);
            if d <= 1.0 {
                let humerus = hypot(x.abs() - ax, y - ay);
                return if humerus <= 7.0 {
                    hu::CANCELLOUS
                } else if humerus <= 10.0 {
                    hu::CORTICAL
                } else if d > 0.85 {
                    hu::FAT
                } else {
                    hu::MUSCLE
                };
            }
        }
        if let Some((top, thickness, half_width)) = self.table
            && x.abs() <= half_width
        {
            // Curved up at the sides, like the cradle of a CT table.
            let surface = top + 0.0012 * x * x;
            let depth = surface - y;
            if (0.0..thickness).contains(&depth) {
                return if depth < 2.5 || depth > thickness - 2.5 {
                    hu::TABLE_SHELL
                } else {
                    hu::FOAM
                };
            }
        }
        hu::AIR
    }
}

/// The length of (a, b): no overflow to guard against at these sizes, so faster than `f64::hypot`.
fn hypot(a: f64, b: f64) -> f64 {
    (a * a + b * b).sqrt()
}
