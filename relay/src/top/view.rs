//! Draws a [`View`] with ratatui: a header (the instance, whether its daemon runs), the
//! verdicts' rates beside the drops by reason, then the busiest channel flows, room
//! routes, and the tenants against their limits.

use ratatui::{
    Frame, Terminal,
    backend::TestBackend,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Table},
};
use relay_common::flow::ActionKind;

use super::{Rate, TenantRow, View};

/// What the header says besides the figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub instance: String,
    /// Where the XDP program is attached (its pinned links).
    pub interfaces: Vec<String>,
    pub daemon: Daemon,
    /// The refresh interval, in milliseconds.
    pub interval_ms: u64,
    /// Refreshes so far: shows that the view is live (and lets a test wait for the next).
    pub refreshes: u64,
    /// Why the last refresh failed, if it did (the figures are then the previous ones).
    pub error: Option<String>,
}

/// Whether the instance's daemon runs (`liveness`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Daemon {
    Up,
    Down,
    Unknown(String),
}

/// What the header says of a daemon that is not running.
pub const DAEMON_DOWN: &str = "daemon down: the kernel keeps forwarding";

/// A count or rate with an SI prefix: 950, 1.2k, 3.4M, 5.6G.
pub fn si(v: f64) -> String {
    let (scaled, prefix) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        return format!("{v:.0}");
    };
    format!("{scaled:.1}{prefix}")
}

#[expect(clippy::cast_precision_loss, reason = "shown with 2 digits")]
fn count(v: u64) -> String {
    si(v as f64)
}

fn bits(r: Rate) -> String {
    si(r.bytes * 8.0)
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

/// Draws the whole view in the frame.
pub fn draw(frame: &mut Frame<'_>, header: &Header, view: &View) {
    let tenants = u16::try_from(view.tenants.len().clamp(1, 8)).unwrap_or(8) + 3;
    let [top, kernel, flows, routes, tenant_area] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(13),
        Constraint::Fill(3),
        Constraint::Fill(2),
        Constraint::Length(tenants),
    ])
    .areas(frame.area());
    frame.render_widget(header_lines(header, view), top);
    let [verdicts, drops] =
        Layout::horizontal([Constraint::Fill(3), Constraint::Fill(2)]).areas(kernel);
    frame.render_widget(verdict_table(view), verdicts);
    frame.render_widget(drop_table(view), drops);
    frame.render_widget(flow_table(view), flows);
    frame.render_widget(route_table(view), routes);
    frame.render_widget(tenant_table(view), tenant_area);
}

fn header_lines<'a>(header: &Header, view: &View) -> Paragraph<'a> {
    let attached = if header.interfaces.is_empty() {
        "attached to no interface".to_owned()
    } else {
        format!("XDP on {}", header.interfaces.join(", "))
    };
    let first = Line::from(vec![
        Span::styled("relay top", bold()),
        Span::raw(format!(
            "  instance {}  {attached}  every {} ms, refresh {}  (q quits)",
            header.instance, header.interval_ms, header.refreshes,
        )),
    ]);
    let daemon = match &header.daemon {
        Daemon::Up => Span::styled("daemon up", bold().fg(Color::Green)),
        Daemon::Down => Span::styled(DAEMON_DOWN, bold().fg(Color::Yellow)),
        Daemon::Unknown(why) => Span::styled(format!("daemon: unknown ({why})"), bold()),
    };
    let mut second = vec![daemon];
    second.push(Span::raw(match view.seconds {
        Some(_) => format!(
            "  kernel tables: {}, {}",
            fill("FLOWS", view.flow_entries),
            fill("ROOM_ROUTES", view.route_entries)
        ),
        None => "  measuring the first rates...".to_owned(),
    }));
    if let Some(e) = &header.error {
        second.push(Span::styled(
            format!("  refresh failed: {e}"),
            Style::default().fg(Color::Red),
        ));
    }
    Paragraph::new(vec![first, Line::from(second)])
}

/// How full kernel table `name` is: entries in use, of what it holds (the sizes the
/// metrics' map pressure shows).
fn fill(name: &str, used: usize) -> String {
    let max = crate::metrics::MAPS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, max)| *max);
    format!("{name} {used}/{max}")
}

fn table<'a>(title: String, header: &[&'a str], rows: Vec<Row<'a>>, widths: &[u16]) -> Table<'a> {
    Table::new(rows, widths.iter().map(|w| Constraint::Length(*w)))
        .header(Row::new(header.iter().map(|h| Cell::from(*h))).style(bold()))
        .block(Block::bordered().title(title))
}

fn verdict_table(view: &View) -> Table<'static> {
    let rows = view
        .verdicts
        .iter()
        .map(|r| {
            Row::new([
                r.verdict.name().to_owned(),
                si(r.rate.packets),
                bits(r.rate),
                count(r.total.packets),
                count(r.total.bytes),
            ])
        })
        .collect();
    let share = view.kernel_share.map_or_else(String::new, |s| {
        format!(": kernel forwards {:.1}% of UDP", s * 100.0)
    });
    table(
        format!("XDP verdicts{share}"),
        &["verdict", "pkt/s", "bit/s", "packets", "bytes"],
        rows,
        &[12, 9, 9, 9, 9],
    )
}

fn drop_table(view: &View) -> Table<'static> {
    let rows = view
        .drops
        .iter()
        .map(|d| Row::new([d.reason.to_owned(), si(d.rate), count(d.total)]))
        .collect();
    table(
        "Kernel drops by reason".to_owned(),
        &["reason", "pkt/s", "packets"],
        rows,
        &[15, 9, 9],
    )
}

/// A tenant's name, by policer slot (0: none).
fn tenant_name(view: &View, slot: u32) -> String {
    if slot == 0 {
        return "-".to_owned();
    }
    view.tenants
        .iter()
        .find(|t| t.tenant.slot == slot)
        .and_then(|t| t.tenant.name.clone())
        .unwrap_or_else(|| format!("#{slot}"))
}

fn flow_table(view: &View) -> Table<'static> {
    let rows = view
        .flows
        .iter()
        .map(|f| {
            let kind = match f.kind {
                Some(ActionKind::StripChannel) => "to peer",
                Some(ActionKind::AddChannel) => "to client",
                Some(ActionKind::Hairpin) => "hairpin",
                Some(ActionKind::RewriteOnly) => "rtp",
                None => "?",
            };
            Row::new([
                kind.to_owned(),
                f.from.to_string(),
                f.to.to_string(),
                if f.channel == 0 {
                    "-".to_owned()
                } else {
                    format!("{:#06x}", f.channel)
                },
                tenant_name(view, f.tenant),
                si(f.rate.packets),
                bits(f.rate),
                count(f.total),
            ])
        })
        .collect();
    table(
        format!(
            "Busiest TURN channel flows ({} of {})",
            view.flows.len(),
            view.flow_entries
        ),
        &[
            "direction",
            "from",
            "to",
            "channel",
            "tenant",
            "pkt/s",
            "bit/s",
            "packets",
        ],
        rows,
        &[10, 47, 47, 8, 12, 9, 9, 9],
    )
}

fn route_table(view: &View) -> Table<'static> {
    let rows = view
        .routes
        .iter()
        .map(|r| {
            Row::new([
                r.publisher.to_string(),
                r.endpoint.to_string(),
                format!("{:08x} {}", r.ssrc, if r.rtcp { "rtcp" } else { "rtp" }),
                r.subscribers.to_string(),
                tenant_name(view, r.tenant),
                si(r.rate.packets),
                bits(r.rate),
                si(r.copies),
                count(r.total),
            ])
        })
        .collect();
    table(
        format!(
            "Busiest room tracks ({} of {} routes)",
            view.routes.len(),
            view.route_entries
        ),
        &[
            "publisher",
            "endpoint",
            "ssrc",
            "subs",
            "tenant",
            "pkt/s",
            "bit/s",
            "copies/s",
            "packets",
        ],
        rows,
        &[40, 40, 13, 5, 12, 9, 9, 9, 9],
    )
}

/// How much of its limit a tenant uses now: the larger of its packet and bit rates' shares
/// (`None`: no limit).
#[expect(clippy::cast_precision_loss, reason = "a percentage")]
fn used(t: &TenantRow) -> Option<f64> {
    let l = t.tenant.limit;
    let packets = (l.packets_per_sec > 0).then(|| t.rate.packets / l.packets_per_sec as f64);
    let bits = (l.bits_per_sec > 0).then(|| t.rate.bytes * 8.0 / l.bits_per_sec as f64);
    match (packets, bits) {
        (Some(p), Some(b)) => Some(p.max(b)),
        (p, b) => p.or(b),
    }
}

fn tenant_table(view: &View) -> Table<'static> {
    let limit = |v: u64| if v == 0 { "-".to_owned() } else { count(v) };
    let rows = view
        .tenants
        .iter()
        .map(|t| {
            Row::new([
                tenant_name(view, t.tenant.slot),
                limit(t.tenant.limit.packets_per_sec),
                limit(t.tenant.limit.bits_per_sec),
                si(t.rate.packets),
                bits(t.rate),
                used(t).map_or_else(|| "-".to_owned(), |u| format!("{:.0}%", u * 100.0)),
                si(t.policed),
                count(t.tenant.policed.packets),
            ])
        })
        .collect();
    table(
        "Tenants against their limits (kernel)".to_owned(),
        &[
            "tenant",
            "limit pkt/s",
            "limit bit/s",
            "pkt/s",
            "bit/s",
            "of limit",
            "policed/s",
            "policed",
        ],
        rows,
        &[16, 12, 12, 9, 9, 9, 10, 9],
    )
}

/// The view drawn on a `width` x `height` screen, as text lines (trailing blanks cut):
/// `relay top --once`, and the drawing's tests.
pub fn text(header: &Header, view: &View, width: u16, height: u16) -> std::io::Result<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, height))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    terminal
        .draw(|f| draw(f, header, view))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(lines(terminal.backend().buffer()))
}

fn lines(buffer: &ratatui::buffer::Buffer) -> String {
    let Rect { width, height, .. } = buffer.area;
    let mut out = String::new();
    for y in 0..height {
        let line: String = (0..width).map(|x| buffer[(x, y)].symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::{
        dataplane::VerdictCounters,
        top::{Snapshot, Tenant, compare},
    };
    use relay_common::{Counters, Verdict, police::Limit};

    fn header(daemon: Daemon) -> Header {
        Header {
            instance: "edge".to_owned(),
            interfaces: vec!["eth0".to_owned()],
            daemon,
            interval_ms: 1000,
            refreshes: 2,
            error: None,
        }
    }

    fn view() -> View {
        let t0 = Instant::now();
        let snap = |at, forwarded: u64, policed| {
            let mut verdicts = VerdictCounters::default();
            verdicts.0[Verdict::Forwarded.index() as usize] = Counters {
                packets: forwarded,
                bytes: forwarded * 200,
            };
            Snapshot {
                at,
                verdicts,
                flows: Vec::new(),
                routes: Vec::new(),
                tenants: vec![Tenant {
                    slot: 1,
                    name: Some("north".to_owned()),
                    limit: Limit {
                        packets_per_sec: 100,
                        bits_per_sec: 2_000_000,
                        burst_ns: 0,
                    },
                    policed: Counters {
                        packets: policed,
                        bytes: 0,
                    },
                }],
            }
        };
        compare(
            Some(&snap(t0, 1000, 0)),
            &snap(t0 + Duration::from_secs(1), 1500, 7),
            10,
        )
    }

    /// The cells of the first table row starting with `first`, to the end of the line.
    fn row<'a>(screen: &'a str, first: &str) -> Vec<&'a str> {
        screen
            .lines()
            .find_map(|l| {
                let cells: Vec<&str> = l
                    .split(|c: char| c == '│' || c.is_whitespace())
                    .filter(|c| !c.is_empty())
                    .collect();
                let at = cells.iter().position(|c| *c == first)?;
                Some(cells[at..].to_vec())
            })
            .unwrap_or_else(|| panic!("no row {first}:\n{screen}"))
    }

    #[test]
    fn the_screen_shows_rates_drops_tenants_and_the_daemon() {
        let screen = text(&header(Daemon::Up), &view(), 160, 50).unwrap();
        assert!(screen.contains("instance edge  XDP on eth0"), "{screen}");
        assert!(screen.contains("daemon up"), "{screen}");
        assert!(
            screen.contains("kernel tables: FLOWS 0/65536, ROOM_ROUTES 0/1024"),
            "{screen}"
        );
        assert!(!screen.contains(DAEMON_DOWN), "{screen}");
        // 500 packets of 200 bytes in a second: 500 pkt/s, 800 kbit/s; 1500 in all.
        assert_eq!(
            row(&screen, "forwarded")[..5],
            ["forwarded", "500", "800.0k", "1.5k", "300.0k"]
        );
        assert!(screen.contains("kernel forwards 100.0% of UDP"), "{screen}");
        assert_eq!(row(&screen, "over-limit")[..3], ["over-limit", "0", "0"]);
        assert_eq!(
            row(&screen, "north"),
            ["north", "100", "2.0M", "0", "0", "0%", "7", "7"]
        );
        let down = text(&header(Daemon::Down), &view(), 160, 50).unwrap();
        assert!(down.contains(DAEMON_DOWN), "{down}");
    }

    #[test]
    fn numbers_get_si_prefixes() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(999.4), "999");
        assert_eq!(si(1234.0), "1.2k");
        assert_eq!(si(5_600_000.0), "5.6M");
        assert_eq!(si(7.0e9), "7.0G");
    }

    #[test]
    fn a_small_terminal_still_draws() {
        let screen = text(&header(Daemon::Unknown("denied".into())), &view(), 40, 10).unwrap();
        assert!(screen.contains("relay top"), "{screen}");
    }
}
