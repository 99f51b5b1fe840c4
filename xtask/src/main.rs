//! `cargo xtask`: Relay's developer commands.
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Relay's developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build and manage the network-namespace lab.
    Lab {
        #[command(subcommand)]
        action: LabAction,
        /// Name prefix of the lab's namespaces.
        #[arg(long, default_value = xtask::lab::DEFAULT_PREFIX, global = true)]
        prefix: String,
    },
}

#[derive(Subcommand)]
enum LabAction {
    Up,
    Down,
    Status,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Lab { action, prefix } => lab(&action, &prefix),
    }
}

fn lab(action: &LabAction, prefix: &str) -> anyhow::Result<()> {
    match action {
        LabAction::Up => {
            let lab = xtask::lab::Lab::up(prefix)?;
            // Keep it up after this process exits.
            std::mem::forget(lab);
            println!("lab {prefix} is up");
        }
        LabAction::Down => {
            xtask::lab::down(prefix)?;
            println!("lab {prefix} is down");
        }
        LabAction::Status => {
            for (ns, up) in xtask::lab::status(prefix)? {
                println!("{ns:<24} {}", if up { "up" } else { "absent" });
            }
        }
    }
    Ok(())
}
