//! A plan: for each value a profile wants, what the host has now and whether `apply` would
//! change it.

use serde::{Deserialize, Serialize};

use crate::{
    Error,
    host::Host,
    profile::{Options, Profile, Target, targets},
    setting::Setting,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Already the proposed value.
    Keep,
    /// `apply` sets it.
    Change,
    /// This host has no such setting (an older kernel, a driver without it, a host-wide
    /// sysctl that is invisible in this network namespace).
    Absent,
    /// Visible but read-only here: a host-wide sysctl seen from a network namespace. Set it
    /// from the host's namespace.
    ReadOnly,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub setting: Setting,
    pub current: Option<String>,
    pub proposed: String,
    pub action: Action,
    pub reason: String,
    /// The link goes down for a moment while the driver re-creates its queues.
    pub resets_link: bool,
    /// Whether it takes a reboot; nothing `relay tune` changes does (kept in the output so an
    /// operator need not guess).
    pub reboot: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub profile: Profile,
    pub options: Options,
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn changes(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.action == Action::Change)
    }
}

/// What `apply --profile profile` would do on `host`.
pub fn plan(host: &Host, profile: Profile, options: &Options) -> Result<Plan, Error> {
    let steps = targets(host, profile, options)?
        .into_iter()
        .map(|target| step(host, target))
        .collect::<Result<_, _>>()?;
    Ok(Plan {
        profile,
        options: options.clone(),
        steps,
    })
}

fn step(host: &Host, target: Target) -> Result<Step, Error> {
    let Target {
        setting,
        value,
        reason,
    } = target;
    let current = setting
        .read(host)
        .map_err(|e| Error::io(&format!("reading {setting}"), e))?;
    let action = match (&current, &setting) {
        (None, _) => Action::Absent,
        (Some(now), _) if setting.same(now, &value) => Action::Keep,
        (Some(_), Setting::Sysctl { key }) => {
            let writable = host
                .sysctl_writable(key)
                .map_err(|e| Error::io(&format!("reading {setting}"), e))?;
            if writable {
                Action::Change
            } else {
                Action::ReadOnly
            }
        }
        (Some(_), _) => Action::Change,
    };
    Ok(Step {
        resets_link: setting.resets_link(),
        reboot: false,
        setting,
        current,
        proposed: value,
        action,
        reason,
    })
}
