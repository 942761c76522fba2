//! The labs compiled into `skv`: each folder `labs/NN-slug/` contributes its lab.toml and
//! README.md (as text) and its check.rs (as a module). Adding a lab is one `lab!` line here
//! (see labs/README.md, "Writing a lab").

use std::sync::OnceLock;

use super::check::{Ctx, Report};
use super::spec::LabSpec;

/// A lab's world setup: see [`Lab::setup`].
pub(crate) type Setup = fn(&mut Ctx) -> Result<(), String>;

/// One lab.
#[derive(Debug)]
pub(crate) struct Lab {
    pub(crate) number: u32,
    /// `NN-slug`, the folder under labs/ and the default DIR under ./skv-lab/.
    pub(crate) folder: &'static str,
    pub(crate) toml: &'static str,
    pub(crate) readme: &'static str,
    /// The checker's rule (the lab's check.rs).
    pub(crate) check: fn(&Ctx) -> Report,
    /// What the world does once its nodes run and its data is seeded, beyond what lab.toml
    /// can say (an attacker's requests, say): the lab's check.rs `setup`, for the labs that
    /// have one. It may record what it drew in `ctx.state.facts`.
    pub(crate) setup: Option<Setup>,
    spec: OnceLock<LabSpec>,
}

impl Lab {
    /// The folder name without its number.
    pub(crate) fn slug(&self) -> &'static str {
        self.folder
            .split_once('-')
            .map_or(self.folder, |(_, slug)| slug)
    }

    /// The parsed lab.toml. Every lab.toml is parsed by a unit test, so a bad one never ships.
    pub(crate) fn spec(&self) -> &LabSpec {
        self.spec.get_or_init(|| {
            toml::from_str(self.toml)
                .unwrap_or_else(|e| panic!("labs/{}/lab.toml is invalid: {e}", self.folder))
        })
    }
}

/// `lab!(N, "NN-slug", module)`: the lab's files under labs/NN-slug/, its check.rs compiled
/// as `module`; `lab!(N, "NN-slug", module, setup)` also runs the module's `setup` at start.
macro_rules! lab {
    ($number:literal, $folder:literal, $module:ident) => {
        Lab {
            number: $number,
            folder: $folder,
            toml: include_str!(concat!("../../../../labs/", $folder, "/lab.toml")),
            readme: include_str!(concat!("../../../../labs/", $folder, "/README.md")),
            check: $module::check,
            setup: None,
            spec: OnceLock::new(),
        }
    };
    ($number:literal, $folder:literal, $module:ident, setup) => {
        Lab {
            setup: Some($module::setup),
            ..lab!($number, $folder, $module)
        }
    };
}

// Each lab's check.rs: `pub(crate) fn check(ctx: &Ctx) -> Report`.
#[path = "../../../../labs/01-sniff/check.rs"]
mod lab01;
#[path = "../../../../labs/02-no-client-auth/check.rs"]
mod lab02;
#[path = "../../../../labs/03-rogue-ca/check.rs"]
mod lab03;
#[path = "../../../../labs/04-expired-cert/check.rs"]
mod lab04;
#[path = "../../../../labs/05-alg-none/check.rs"]
mod lab05;
#[path = "../../../../labs/06-hs256-confusion/check.rs"]
mod lab06;
#[path = "../../../../labs/07-stolen-token/check.rs"]
mod lab07;
#[path = "../../../../labs/08-expired-token/check.rs"]
mod lab08;
#[path = "../../../../labs/09-scope-escape/check.rs"]
mod lab09;
#[path = "../../../../labs/10-key-rotation/check.rs"]
mod lab10;
#[path = "../../../../labs/11-audit-hunt/check.rs"]
mod lab11;
#[path = "../../../../labs/12-node-impersonation/check.rs"]
mod lab12;
#[path = "../../../../labs/13-rebalance/check.rs"]
mod lab13;
#[path = "../../../../labs/14-kill-node/check.rs"]
mod lab14;
#[path = "../../../../labs/15-partition-leader/check.rs"]
mod lab15;
#[path = "../../../../labs/16-price/check.rs"]
mod lab16;

/// Every lab, in order.
pub(crate) fn labs() -> &'static [Lab] {
    static LABS: OnceLock<Vec<Lab>> = OnceLock::new();
    LABS.get_or_init(|| {
        vec![
            lab!(1, "01-sniff", lab01),
            lab!(2, "02-no-client-auth", lab02),
            lab!(3, "03-rogue-ca", lab03),
            lab!(4, "04-expired-cert", lab04),
            lab!(5, "05-alg-none", lab05),
            lab!(6, "06-hs256-confusion", lab06),
            lab!(7, "07-stolen-token", lab07),
            lab!(8, "08-expired-token", lab08),
            lab!(9, "09-scope-escape", lab09),
            lab!(10, "10-key-rotation", lab10),
            lab!(11, "11-audit-hunt", lab11, setup),
            lab!(12, "12-node-impersonation", lab12),
            lab!(13, "13-rebalance", lab13),
            lab!(14, "14-kill-node", lab14),
            lab!(15, "15-partition-leader", lab15, setup),
            lab!(16, "16-price", lab16),
        ]
    })
}
