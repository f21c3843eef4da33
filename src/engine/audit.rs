//! The mirror auditor: the message it receives, the one strict parser for its
//! verdict, the revision message the primary gets back, and the sampling of
//! which answers are audited at all.

use std::collections::HashMap;
use std::sync::Mutex;

use rand::{RngExt, SeedableRng, rngs::StdRng};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agent::AuditPolicy;

/// An auditor's judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Verdict {
    /// The answer is accepted.
    #[serde(rename = "pass")]
    Pass,
    /// The answer goes back to the primary with feedback.
    #[serde(rename = "needs-revision")]
    NeedsRevision,
    /// The answer (and the task) is rejected outright.
    #[serde(rename = "fail")]
    Fail,
    /// The auditor's answer could not be parsed, twice: the task fails.
    #[serde(rename = "error")]
    Error,
}

impl Verdict {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::NeedsRevision => "needs-revision",
            Verdict::Fail => "fail",
            Verdict::Error => "error",
        }
    }
}

/// Severity of one issue an auditor found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Must be fixed.
    Critical,
    /// Should be fixed.
    Major,
    /// Nice to fix.
    Minor,
}

/// One issue an auditor found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Issue {
    /// How serious it is.
    pub severity: Severity,
    /// What is wrong.
    pub note: String,
}

/// A parsed audit report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Report {
    /// pass, needs-revision, fail (error is never parsed, only assigned).
    pub verdict: Verdict,
    /// What to change, or why it passes or fails.
    pub feedback: String,
    /// Individual findings.
    #[serde(default)]
    pub issues: Vec<Issue>,
    /// 0.0..=1.0, if the auditor gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
}

/// The wire shape, parsed strictly before it becomes a [`Report`].
#[derive(Deserialize)]
struct Wire {
    verdict: String,
    feedback: String,
    #[serde(default)]
    issues: Vec<Issue>,
    #[serde(default)]
    confidence: Option<f64>,
}

/// The one parser every audit goes through. Accepts a bare JSON object, or an
/// answer whose only fenced code block holds one; anything else is an error
/// that says what was wrong (it is quoted back to the auditor in the repair
/// request). Nothing that fails here ever counts as a pass.
pub fn parse_report(answer: &str) -> Result<Report, String> {
    let text = answer.trim();
    let json = if text.starts_with('{') {
        text.to_string()
    } else {
        let blocks = fenced_blocks(text);
        match blocks.len() {
            0 => {
                return Err("the answer is not a JSON object and contains no ```json block".into());
            }
            1 => blocks[0].trim().to_string(),
            n => {
                return Err(format!(
                    "the answer contains {n} code blocks; send exactly one JSON object"
                ));
            }
        }
    };
    let wire: Wire =
        serde_json::from_str(&json).map_err(|e| format!("invalid verdict JSON: {e}"))?;
    let verdict = match wire.verdict.as_str() {
        "pass" => Verdict::Pass,
        "needs-revision" => Verdict::NeedsRevision,
        "fail" => Verdict::Fail,
        other => {
            return Err(format!(
                "`verdict` is \"{other}\"; it must be exactly \"pass\", \"needs-revision\" or \"fail\""
            ));
        }
    };
    if let Some(c) = wire.confidence
        && !(0.0..=1.0).contains(&c)
    {
        return Err(format!(
            "`confidence` is {c}; it must be between 0.0 and 1.0"
        ));
    }
    if verdict != Verdict::Pass && wire.feedback.trim().is_empty() {
        return Err(format!(
            "`feedback` is empty; a \"{}\" verdict must say what is wrong",
            verdict.as_str()
        ));
    }
    Ok(Report {
        verdict,
        feedback: wire.feedback,
        issues: wire.issues,
        confidence: wire.confidence,
    })
}

/// The contents of ``` fenced blocks.
fn fenced_blocks(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        // Skip the info string (e.g. `json`) up to the end of the line.
        let body_start = after.find('\n').map_or(after.len(), |i| i + 1);
        let body = &after[body_start..];
        match body.find("```") {
            Some(end) => {
                out.push(&body[..end]);
                rest = &body[end + 3..];
            }
            None => break,
        }
    }
    out
}

/// What the auditor is told about the format (also used in the repair request).
pub const FORMAT: &str = "Reply with only a JSON object, no other text:\n\
{\"verdict\": \"pass\" | \"needs-revision\" | \"fail\", \"feedback\": \"<what must change, or why it passes or fails>\", \
\"issues\": [{\"severity\": \"critical\" | \"major\" | \"minor\", \"note\": \"...\"}], \"confidence\": <0.0-1.0>}";

/// One earlier round, as the auditor and the outbox see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Round {
    /// 1-based answer number.
    pub attempt: u32,
    /// The model that wrote the answer.
    pub model: String,
    /// True for the escalation model's answer.
    #[serde(default)]
    pub escalation: bool,
    /// The verdict on it.
    pub verdict: Verdict,
    /// The auditor's feedback (or the parse error, for `error`).
    pub feedback: String,
    /// The auditor's issues.
    #[serde(default)]
    pub issues: Vec<Issue>,
    /// The auditor's confidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
}

/// The structured message the auditor receives.
pub fn audit_message(
    agent: &str,
    input: &str,
    output: &str,
    attempt: u32,
    max_attempts: u32,
    earlier: &[Round],
) -> String {
    let mut m = format!(
        "You are auditing an answer of the agent `{agent}` (answer {attempt} of at most {max_attempts}).\n\n\
         ## Original input\n\n{input}\n\n## Answer under review\n\n{output}\n\n## Earlier feedback\n\n"
    );
    if earlier.is_empty() {
        m.push_str("(none: this is the first answer)\n");
    } else {
        for r in earlier {
            m.push_str(&format!(
                "- answer {} ({}): {}\n",
                r.attempt,
                r.verdict.as_str(),
                r.feedback
            ));
        }
    }
    m.push('\n');
    m.push_str(FORMAT);
    m
}

/// The message that asks the primary to revise (stored with its attempt).
pub fn revision_message(round: &Round, revision: u32, max_revisions: u32) -> String {
    let mut m = format!(
        "An independent auditor reviewed your previous answer and asks for a revision \
         (revision {revision} of {max_revisions}).\n\nFeedback:\n{}\n",
        round.feedback
    );
    if !round.issues.is_empty() {
        m.push_str("\nIssues:\n");
        for i in &round.issues {
            let severity = match i.severity {
                Severity::Critical => "critical",
                Severity::Major => "major",
                Severity::Minor => "minor",
            };
            m.push_str(&format!("- [{severity}] {}\n", i.note));
        }
    }
    m.push_str(
        "\nWrite your complete revised answer, addressing every point. Reply with the answer only.",
    );
    m
}

/// The repair request after an unparseable verdict.
pub fn repair_message(error: &str) -> String {
    format!("Your verdict could not be used: {error}.\n\n{FORMAT}")
}

/// Whether one task is audited, and why (recorded on the task).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Decision {
    /// True if the answer goes to the auditor.
    pub audited: bool,
    /// The share of tasks audited at the time.
    pub rate: f64,
    /// The random draw compared with `rate` (absent when every answer is audited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draw: Option<f64>,
    /// Why, in words.
    pub reason: String,
}

/// Everything the audit did for one task (stored in `Task::audit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditTrail {
    /// The auditor agent.
    pub mirror: String,
    /// Whether and why this task was audited.
    pub decision: Decision,
    /// Each audited answer's verdict, in order.
    #[serde(default)]
    pub rounds: Vec<Round>,
    /// The verdict that ended the loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_verdict: Option<Verdict>,
}

/// Adaptive state of one agent: passes since its last rejection.
#[derive(Debug, Default, Clone, Copy)]
struct Streak {
    passes: u32,
    rejected: bool,
}

/// How much the adaptive rate shrinks per consecutive pass.
pub const ADAPTIVE_DECAY: f64 = 0.8;

/// Decides which answers are audited: sampled at an agent's `audit.rate`,
/// adaptively lowered towards `min_rate` while audits keep passing and back to
/// 1.0 after a rejection. Seeded for reproducible runs (`[audit] seed`).
pub struct Sampler {
    rng: Mutex<StdRng>,
    streaks: Mutex<HashMap<String, Streak>>,
}

impl Sampler {
    /// A sampler with a fixed seed, or a random one.
    pub fn new(seed: Option<u64>) -> Sampler {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        Sampler {
            rng: Mutex::new(rng),
            streaks: Mutex::new(HashMap::new()),
        }
    }

    /// Decide for one task of `agent`.
    pub fn decide(&self, agent: &str, policy: Option<&AuditPolicy>) -> Decision {
        let Some(p) = policy else {
            return Decision {
                audited: true,
                rate: 1.0,
                draw: None,
                reason: "every answer is audited (no `audit` policy)".into(),
            };
        };
        let streak = self
            .streaks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(agent)
            .copied()
            .unwrap_or_default();
        let (rate, why) = if p.adaptive {
            let start = if streak.rejected { 1.0 } else { p.rate };
            let rate = (start * ADAPTIVE_DECAY.powi(streak.passes as i32))
                .max(p.min_rate)
                .min(1.0);
            (
                rate,
                format!(
                    "adaptive rate {rate:.3} after {} pass(es) since {}",
                    streak.passes,
                    if streak.rejected {
                        "the last rejection"
                    } else {
                        "the start"
                    }
                ),
            )
        } else {
            (p.rate, format!("fixed rate {:.3}", p.rate))
        };
        if rate >= 1.0 {
            return Decision {
                audited: true,
                rate,
                draw: None,
                reason: format!("audited: {why}"),
            };
        }
        let draw: f64 = self.rng.lock().unwrap_or_else(|e| e.into_inner()).random();
        let audited = draw < rate;
        Decision {
            audited,
            rate,
            draw: Some((draw * 1e4).round() / 1e4),
            reason: format!(
                "{}: draw {draw:.4} {} {why}",
                if audited { "audited" } else { "not audited" },
                if audited { "<" } else { ">=" }
            ),
        }
    }

    /// Learn from a verdict (adaptive policies only care).
    pub fn observe(&self, agent: &str, verdict: Verdict) {
        let mut streaks = self.streaks.lock().unwrap_or_else(|e| e.into_inner());
        let s = streaks.entry(agent.to_string()).or_default();
        match verdict {
            Verdict::Pass => s.passes += 1,
            Verdict::NeedsRevision | Verdict::Fail => {
                s.passes = 0;
                s.rejected = true;
            }
            Verdict::Error => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_and_fenced_objects_parse() {
        let r =
            parse_report(r#"{"verdict": "pass", "feedback": "fine", "confidence": 0.9}"#).unwrap();
        assert_eq!(r.verdict, Verdict::Pass);
        let r = parse_report(
            "Here is my verdict:\n```json\n{\"verdict\": \"needs-revision\", \"feedback\": \"fix x\", \"issues\": [{\"severity\": \"major\", \"note\": \"x\"}]}\n```\n",
        )
        .unwrap();
        assert_eq!(r.verdict, Verdict::NeedsRevision);
        assert_eq!(r.issues[0].severity, Severity::Major);
    }

    #[test]
    fn anything_else_is_an_error_never_a_pass() {
        for bad in [
            "PASS",
            "Looks good to me!",
            r#"{"verdict": "Pass", "feedback": ""}"#,
            r#"{"verdict": "approved", "feedback": "ok"}"#,
            r#"{"verdict": "needs-revision", "feedback": ""}"#,
            r#"{"feedback": "no verdict"}"#,
            r#"{"verdict": "pass", "feedback": "x", "confidence": 3}"#,
            r#"{"verdict": "pass", "feedback": "x", "issues": [{"severity": "huge", "note": "n"}]}"#,
            "```json\n{\"verdict\": \"pass\", \"feedback\": \"a\"}\n```\n```json\n{\"verdict\": \"fail\", \"feedback\": \"b\"}\n```",
            "{\"verdict\": \"pass\"",
        ] {
            assert!(parse_report(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn adaptive_rates_fall_and_reset() {
        let s = Sampler::new(Some(1));
        let p = AuditPolicy {
            rate: 1.0,
            min_rate: 0.2,
            adaptive: true,
        };
        assert_eq!(s.decide("a", Some(&p)).rate, 1.0);
        s.observe("a", Verdict::Pass);
        assert!((s.decide("a", Some(&p)).rate - 0.8).abs() < 1e-9);
        for _ in 0..20 {
            s.observe("a", Verdict::Pass);
        }
        assert!((s.decide("a", Some(&p)).rate - 0.2).abs() < 1e-9);
        s.observe("a", Verdict::NeedsRevision);
        assert_eq!(s.decide("a", Some(&p)).rate, 1.0);
    }

    #[test]
    fn the_same_seed_gives_the_same_decisions() {
        let p = AuditPolicy {
            rate: 0.5,
            min_rate: 0.5,
            adaptive: false,
        };
        let a: Vec<bool> = (0..32)
            .map(|_| Sampler::new(Some(7)))
            .map(|s| s.decide("x", Some(&p)).audited)
            .collect();
        let one = Sampler::new(Some(7));
        let b: Vec<bool> = (0..32).map(|_| one.decide("x", Some(&p)).audited).collect();
        assert!(
            a.iter().all(|&x| x == a[0]),
            "fresh samplers with one seed agree on the first draw"
        );
        assert!(
            b.iter().any(|&x| x) && b.iter().any(|&x| !x),
            "a rate of 0.5 samples both ways"
        );
    }
}
