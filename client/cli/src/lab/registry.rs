//! The labs compiled into `skv`: each folder `labs/NN-slug/` contributes its lab.toml and
//! README.md (as text) and its check.rs (as a module). Adding a lab is one `lab!` line here
//! (see labs/README.md, "Writing a lab").

use std::sync::OnceLock;

use super::check::{Ctx, Report};
use super::spec::LabSpec;

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
/// as `module`.
macro_rules! lab {
    ($number:literal, $folder:literal, $module:ident) => {
        Lab {
            number: $number,
            folder: $folder,
            toml: include_str!(concat!("../../../../labs/", $folder, "/lab.toml")),
            readme: include_str!(concat!("../../../../labs/", $folder, "/README.md")),
            check: $module::check,
            spec: OnceLock::new(),
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
        ]
    })
}
