//! `relay top`: the kernel's figures for an instance, live in the terminal, read from its
//! pins (so it goes on while the daemon is down or restarting, and says so).

use std::{
    io::IsTerminal as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use relay::{
    dataplane::{PinnedTables, Pins},
    liveness,
    top::{
        Snapshot, View, compare,
        view::{self, Daemon, Header},
    },
};

/// Flows and routes listed (the busiest).
const TOP: usize = 20;

#[derive(clap::Args)]
pub(crate) struct TopArgs {
    #[arg(long, default_value = "default", value_name = "NAME")]
    instance: String,
    /// The instance's `--state-dir`, where a running daemon holds its lock.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The relay's TOML file (`relay run --config`), for its tenants' names; without it
    /// tenants are shown by policer slot.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Milliseconds between refreshes (100 to 60000).
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    interval: u64,
    /// Print one screen (rates over one interval) as text and exit: no terminal needed.
    #[arg(long)]
    once: bool,
}

/// What `relay top` and `relay stats` say when nothing is pinned for the instance.
pub(crate) fn no_data_plane(instance: &str, pins: &Pins) -> anyhow::Error {
    anyhow::anyhow!(
        "no data plane pinned at {} (is `relay run --instance {instance} --interface ...` \
         running, or was it, in this network namespace and mounts?)",
        pins.dir().display()
    )
}

pub(crate) fn run(args: &TopArgs) -> anyhow::Result<()> {
    relay::config::check_instance(&args.instance)?;
    let pins = Pins::new(&args.instance);
    let tables = PinnedTables::open(&pins)?.ok_or_else(|| no_data_plane(&args.instance, &pins))?;
    let names = tenant_names(args.config.as_ref())?;
    let state_file = relay::config::state_file(args.state_dir.as_deref(), &args.instance);
    let mut screen = Screen {
        tables: &tables,
        names: &names,
        header: Header {
            instance: args.instance.clone(),
            interfaces: pins.interfaces(),
            daemon: Daemon::Down,
            interval_ms: args.interval,
            refreshes: 0,
            error: None,
        },
        state_file,
        before: None,
        view: View::default(),
    };
    screen.refresh()?;
    let interval = Duration::from_millis(args.interval);
    if args.once {
        std::thread::sleep(interval);
        screen.refresh()?;
        // A terminal's size; piped, a wide screen that holds every column.
        let size = std::io::stdout()
            .is_terminal()
            .then(|| ratatui::crossterm::terminal::size().ok())
            .flatten();
        let (width, height) = size.unwrap_or((160, 50));
        print!(
            "{}",
            view::text(&screen.header, &screen.view, width, height)?
        );
        return Ok(());
    }
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "relay top draws on a terminal and its output is not one (`--once` prints one \
             screen as text, `relay stats --json` one snapshot)"
        );
    }
    // Raw mode and the alternate screen, undone on the way out, a panic included.
    let shown = match ratatui::try_init() {
        Ok(mut terminal) => screen.show(&mut terminal, interval),
        Err(e) => Err(anyhow::Error::new(e).context("setting the terminal up")),
    };
    ratatui::restore();
    shown
}

/// The tenants' names in the order of the configuration (tenant `i`: policer slot `i+1`).
fn tenant_names(config: Option<&PathBuf>) -> anyhow::Result<Vec<String>> {
    let Some(path) = config else {
        return Ok(Vec::new());
    };
    let settings = relay::config::Settings {
        config: Some(path.clone()),
        ..relay::config::Settings::default()
    }
    .load()?;
    Ok(settings.tenant.into_iter().map(|t| t.name).collect())
}

struct Screen<'a> {
    tables: &'a PinnedTables,
    names: &'a [String],
    header: Header,
    state_file: PathBuf,
    before: Option<Snapshot>,
    view: View,
}

impl Screen<'_> {
    /// Reads the pins and the daemon's lock again; a failed read keeps the last figures
    /// and says why.
    fn refresh(&mut self) -> anyhow::Result<()> {
        self.header.daemon = match liveness::running(&self.state_file) {
            Ok(true) => Daemon::Up,
            Ok(false) => Daemon::Down,
            Err(e) => Daemon::Unknown(format!("{}: {e}", self.state_file.display())),
        };
        self.header.refreshes += 1;
        match Snapshot::read(self.tables, self.names) {
            Ok(now) => {
                self.view = compare(self.before.as_ref(), &now, TOP);
                self.before = Some(now);
                self.header.error = None;
            }
            Err(e) if self.before.is_some() => self.header.error = Some(e.to_string()),
            Err(e) => return Err(e).context("reading the pinned tables"),
        }
        Ok(())
    }

    /// Draws and refreshes every `interval` until `q`, Esc or Ctrl-C.
    fn show(
        &mut self,
        terminal: &mut ratatui::DefaultTerminal,
        interval: Duration,
    ) -> anyhow::Result<()> {
        loop {
            terminal.draw(|f| view::draw(f, &self.header, &self.view))?;
            let next = Instant::now() + interval;
            while let Some(left) = next.checked_duration_since(Instant::now()) {
                if !event::poll(left)? {
                    continue;
                }
                match event::read()? {
                    Event::Key(key) if key.kind == KeyEventKind::Press && quits(key) => {
                        return Ok(());
                    }
                    Event::Resize(..) => {
                        terminal.draw(|f| view::draw(f, &self.header, &self.view))?;
                    }
                    _ => {}
                }
            }
            self.refresh()?;
        }
    }
}

/// `q`, Esc, Ctrl-C (in raw mode Ctrl-C is a key, not SIGINT).
fn quits(key: event::KeyEvent) -> bool {
    matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
        || (key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL))
}
