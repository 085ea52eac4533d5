//! The demo's terminal chat: what a typed line means, and which thread it goes to.

/// One typed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    /// `@infragpt ...`: a mention (starts a thread from the channel, or replies in the
    /// current thread).
    Mention(String),
    /// Plain text: a reply in the current thread, or a channel message.
    Message(String),
    /// `/thread N`: switch to thread N.
    Thread(usize),
    /// `/new`: back to the channel (the next message starts a thread).
    New,
    /// `/threads`: list threads.
    Threads,
    /// `/as NAME`: speak as another workspace user.
    As(String),
    /// `/replay WHAT`: send a sample event (`workflow-failure`, `alert`) through the
    /// service's webhooks; its message starts a thread the agent triages.
    Replay(String),
    /// `/approve`: click Approve on the latest pending approval, as the current user.
    Approve,
    /// `/deny [reason]`: click Deny on the latest pending approval and submit the reason.
    Deny(Option<String>),
    /// `/help`.
    Help,
    /// `/quit` (or end of input).
    Quit,
    /// Blank line or `# comment` (scripts).
    Nothing,
}

/// What the demo prints for `/help`.
pub(crate) const HELP: &str = "\
  @infragpt <text>   mention the bot (starts a thread, or replies in the current one)
  <text>             reply in the current thread (or post in #ops)
  /thread N          switch to thread N        /new       back to the channel
  /threads           list threads              /as NAME   speak as another user
  /replay WHAT       replay a sample event into #ops (workflow-failure, alert)
  /approve           click Approve on the latest pending approval (as the current user)
  /deny [REASON]     click Deny on it and give the reason in the modal
  /help              this help                 /quit      leave";

/// Parses one line.
pub(crate) fn parse_line(line: &str) -> Result<Line, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(Line::Nothing);
    }
    if line == "/approve" {
        return Ok(Line::Approve);
    }
    if let Some(reason) = line
        .strip_prefix("/deny")
        .filter(|r| r.is_empty() || r.starts_with(char::is_whitespace))
    {
        let reason = reason.trim();
        return Ok(Line::Deny((!reason.is_empty()).then(|| reason.to_owned())));
    }
    if let Some(rest) = line.strip_prefix('/') {
        let mut words = rest.split_whitespace();
        let cmd = words.next().unwrap_or_default();
        let arg = words.next();
        return match (cmd, arg) {
            ("thread", Some(n)) => n
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .map(Line::Thread)
                .ok_or_else(|| format!("/thread needs a thread number, got {n:?}")),
            ("thread", None) => Err("/thread needs a thread number".to_owned()),
            ("new", None) => Ok(Line::New),
            ("threads", None) => Ok(Line::Threads),
            ("as", Some(name)) => Ok(Line::As(name.to_owned())),
            ("as", None) => Err("/as needs a user name".to_owned()),
            ("replay", Some(what)) => Ok(Line::Replay(what.to_owned())),
            ("replay", None) => {
                Err("/replay needs what to replay: workflow-failure or alert".to_owned())
            }
            ("help", None) => Ok(Line::Help),
            ("quit" | "exit", None) => Ok(Line::Quit),
            _ => Err(format!("unknown command /{rest}; try /help")),
        };
    }
    let lower = line.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("@infragpt") {
        let text = line[line.len() - rest.len()..].trim();
        if text.is_empty() {
            return Err("say something after @infragpt".to_owned());
        }
        return Ok(Line::Mention(text.to_owned()));
    }
    Ok(Line::Message(line.to_owned()))
}

/// A thread the demo user started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoThread {
    /// The parent message's ts.
    pub ts: String,
    /// The first words of the parent message.
    pub title: String,
}

/// Where the next message goes and which threads exist.
#[derive(Debug, Default)]
pub struct Threads {
    /// Threads in the order they were started (shown 1-based).
    pub list: Vec<DemoThread>,
    /// Index into `list` of the current thread.
    pub current: Option<usize>,
    /// The channel is monitored (the bot was mentioned there), so plain channel messages are
    /// turns too.
    pub monitored: bool,
}

impl Threads {
    /// The thread ts a new message is posted under, if any.
    pub(crate) fn current_ts(&self) -> Option<&str> {
        self.current.map(|i| self.list[i].ts.as_str())
    }

    /// Switches to thread `n` (1-based).
    pub(crate) fn switch(&mut self, n: usize) -> Result<(), String> {
        if n == 0 || n > self.list.len() {
            return Err(format!(
                "no thread {n}; there are {} (see /threads)",
                self.list.len()
            ));
        }
        self.current = Some(n - 1);
        Ok(())
    }

    /// Records a message posted at the channel level: it starts thread `list.len()`, which
    /// becomes current. Returns its 1-based number.
    pub fn started(&mut self, ts: &str, text: &str) -> usize {
        let title: String = text.chars().take(40).collect();
        self.list.push(DemoThread {
            ts: ts.to_owned(),
            title,
        });
        self.current = Some(self.list.len() - 1);
        self.list.len()
    }

    /// The 1-based number of the thread with parent `ts`.
    pub(crate) fn number_of(&self, ts: &str) -> Option<usize> {
        self.list.iter().position(|t| t.ts == ts).map(|i| i + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        assert_eq!(
            parse_line("@infragpt what is the status?").unwrap(),
            Line::Mention("what is the status?".into())
        );
        assert_eq!(
            parse_line("@InfraGPT deploy api").unwrap(),
            Line::Mention("deploy api".into())
        );
        assert_eq!(
            parse_line("and the db?").unwrap(),
            Line::Message("and the db?".into())
        );
        assert_eq!(parse_line("/thread 2").unwrap(), Line::Thread(2));
        assert!(parse_line("/thread x").is_err());
        assert!(parse_line("/thread 0").is_err());
        assert!(parse_line("/bogus").is_err());
        assert!(parse_line("@infragpt").is_err());
        assert_eq!(parse_line("  # a comment").unwrap(), Line::Nothing);
        assert_eq!(parse_line("/as bob").unwrap(), Line::As("bob".into()));
        assert_eq!(parse_line("/quit").unwrap(), Line::Quit);
        assert_eq!(
            parse_line("/replay alert").unwrap(),
            Line::Replay("alert".into())
        );
        assert!(parse_line("/replay").is_err());
        assert_eq!(parse_line("/approve").unwrap(), Line::Approve);
        assert_eq!(parse_line("/deny").unwrap(), Line::Deny(None));
        assert_eq!(
            parse_line("/deny  change freeze today ").unwrap(),
            Line::Deny(Some("change freeze today".into()))
        );
        assert!(parse_line("/denyall").is_err());
    }

    #[test]
    fn threads_switch_and_number() {
        let mut t = Threads::default();
        assert_eq!(t.current_ts(), None);
        assert_eq!(t.started("1.1", "first"), 1);
        assert_eq!(t.started("2.2", "second"), 2);
        assert_eq!(t.current_ts(), Some("2.2"));
        t.switch(1).unwrap();
        assert_eq!(t.current_ts(), Some("1.1"));
        assert!(t.switch(3).is_err());
        assert_eq!(t.number_of("2.2"), Some(2));
    }
}
