//! One request's events, relayed from its draft-node (or, without one, its target's `Decode`) to
//! the client, and its session moved to another target-node when its target is lost.
//!
//! A lost target (UNAVAILABLE, or its session gone) is replaced: the session is re-opened on
//! another target that answers from its committed tokens and the budget they spent
//! (`OpenSession.resume_*`), a draft-node is re-attached to it, and the client's stream goes on
//! with no token lost, repeated or changed (every random draw is keyed by position, so at T = 0,
//! and at T > 0 with the same seed, the text is the one an uninterrupted run gives).

use specd_proto::v1::{self, TokenEvent};
use specd_rpc::peers::TargetClient;
use specd_rpc::trace;
use specd_telemetry::trace::TraceContext;
use tokio::sync::mpsc;
use tonic::{Code, Status, Streaming};

use crate::CoordinatorNode;

/// Targets a request may lose before it fails.
const MAX_FAILOVERS: u32 = 3;

/// The text of a session's completion as relayed so far. The draft-node (or, for target-only
/// decoding from the prompt, the target) sends text with its tokens; otherwise the coordinator
/// asks the target to detokenize (the new suffix of the decoded completion, holding back an
/// incomplete UTF-8 sequence until the end).
pub(crate) struct TextRelay {
    pub(crate) client: TargetClient,
    pub(crate) ctx: TraceContext,
    /// The completion's tokens so far.
    pub(crate) ids: Vec<u32>,
    printed: usize,
}

impl TextRelay {
    pub(crate) fn new(client: TargetClient, ctx: TraceContext) -> Self {
        TextRelay {
            client,
            ctx,
            ids: Vec::new(),
            printed: 0,
        }
    }

    /// Records tokens whose text the sender already decoded.
    fn sent(&mut self, ids: &[u32], text: &str) {
        self.ids.extend_from_slice(ids);
        self.printed += text.len();
    }

    async fn push(&mut self, ids: &[u32], last: bool) -> Result<String, Status> {
        self.ids.extend_from_slice(ids);
        if ids.is_empty() && !last {
            return Ok(String::new());
        }
        let text = self
            .client
            .detokenize(trace::unary(
                v1::DetokenizeRequest {
                    token_ids: self.ids.clone(),
                },
                &self.ctx,
                trace::SHORT_CALL,
            ))
            .await?
            .into_inner()
            .text;
        if (!last && text.ends_with('\u{fffd}'))
            || text.len() <= self.printed
            || !text.is_char_boundary(self.printed)
        {
            return Ok(String::new());
        }
        let delta = text[self.printed..].to_owned();
        self.printed = text.len();
        Ok(delta)
    }
}

/// How a phase of the relay ended.
enum End {
    /// The last event was sent.
    Done,
    /// The client went away.
    Cancelled,
    /// The draft stream ended early: another draft-node, or the target alone, finishes.
    DraftGone,
    /// A replay-only Decode relayed what the session had committed: a draft may go on from it.
    CaughtUp,
    /// The target (or its session) was lost: move the session.
    Lost(Status),
    /// Anything else: the request fails with it.
    Failed(Status),
}

/// Whether an error means the target or its session is gone (rather than the request is bad).
fn target_lost(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::NotFound | Code::Unknown | Code::Cancelled | Code::Aborted
    )
}

/// A running request's relay (see the module doc).
pub(crate) struct Relay {
    pub(crate) node: CoordinatorNode,
    pub(crate) ctx: TraceContext,
    pub(crate) req: v1::GenerateRequest,
    /// The coordinator's id of the request (its first target session's id).
    pub(crate) sid: String,
    pub(crate) target_url: String,
    pub(crate) target: TargetClient,
    /// The session's id on its current target, and its token there.
    pub(crate) target_sid: String,
    pub(crate) target_token: String,
    pub(crate) prompt_ids: Vec<u32>,
    /// The session's max_tokens, as the target resolved it.
    pub(crate) max_tokens: u32,
    pub(crate) draft_url: Option<String>,
    pub(crate) text: TextRelay,
    pub(crate) tx: mpsc::Sender<Result<TokenEvent, Status>>,
    pub(crate) spent: f64,
    /// Statistics of the phases before the last failover, and of the current one.
    pub(crate) carried: v1::Stats,
    pub(crate) stats: v1::Stats,
    pub(crate) lost: Vec<String>,
    /// Draft-nodes lost mid-request (and replaced).
    pub(crate) lost_drafts: Vec<String>,
    /// The budget the tenant's pool reserved for the session (returned, less what it spent,
    /// when it ends).
    pub(crate) grant: Option<f64>,
}

impl Relay {
    fn committed_len(&self) -> u64 {
        (self.prompt_ids.len() + self.text.ids.len()) as u64
    }

    /// Relays until the request ends, then closes its target session and records how it ended.
    pub(crate) async fn run(mut self, mut draft: Option<Streaming<TokenEvent>>) {
        let end = loop {
            let end = match draft.take() {
                Some(s) => match self.relay_draft(s).await {
                    End::DraftGone => match self.reattach().await {
                        Ok(Some(s)) => {
                            draft = Some(s);
                            continue;
                        }
                        Ok(None) => self.decode(false).await,
                        Err(end) => end,
                    },
                    other => other,
                },
                None => self.decode(false).await,
            };
            match end {
                End::Lost(e) if (self.lost.len() as u32) < MAX_FAILOVERS => {
                    match self.fail_over(&e).await {
                        Ok(d) => draft = d,
                        Err(e) => break End::Failed(e),
                    }
                }
                End::Lost(e) => break End::Failed(e),
                other => break other,
            }
        };
        if let End::Failed(e) = &end {
            tracing::warn!(code = ?e.code(), "request failed: {}", e.message());
            let _ = self.tx.send(Err(e.clone())).await;
        }
        let closed = self
            .target
            .close_session(trace::unary(
                v1::CloseSessionRequest {
                    session_id: self.target_sid.clone(),
                    session_token: self.target_token.clone(),
                },
                &self.ctx,
                trace::SHORT_CALL,
            ))
            .await;
        self.node.tokens.lock().unwrap().remove(&self.sid);
        if let (Some(granted), Some(pools)) = (self.grant, &self.node.pools) {
            // What the target says was spent (it may have judged past the last relayed event);
            // when it cannot say, the whole grant counts as spent.
            let spent = match &closed {
                Ok(s) => s.get_ref().budget_spent.max(self.spent),
                Err(_) => granted,
            };
            pools.release(&self.req.tenant, granted, spent);
        }
        let state = match end {
            End::Cancelled => "cancelled",
            End::Failed(_) => "failed",
            _ => "finished",
        };
        self.node.update(&self.sid, |rec| {
            rec.state = state.into();
            tracing::info!(
                state,
                completion_tokens = rec.completion_tokens,
                budget_spent = rec.budget_spent,
                fallback = rec.fallback,
                failovers = rec.failovers,
                "session ended"
            );
        });
        self.node.prune();
    }

    /// Sends an event on, with the coordinator's session id and the request's statistics.
    async fn send(&mut self, mut ev: TokenEvent) -> Result<(), ()> {
        self.spent = ev.budget_spent;
        if let Some(s) = &ev.stats {
            self.stats = s.clone();
            ev.stats = Some(self.merged());
        }
        let (completion, spent) = (self.text.ids.len() as u64, self.spent);
        self.node.update(&self.sid, |rec| {
            rec.completion_tokens = completion;
            rec.budget_spent = spent;
        });
        ev.session_id = self.sid.clone();
        self.tx.send(Ok(ev)).await.map_err(|_| ())
    }

    /// The request's statistics: the current phase's plus what earlier phases counted.
    fn merged(&self) -> v1::Stats {
        let (c, s) = (&self.carried, &self.stats);
        v1::Stats {
            prompt_tokens: self.prompt_ids.len() as u64,
            completion_tokens: self.text.ids.len() as u64,
            drafted_tokens: c.drafted_tokens + s.drafted_tokens,
            accepted_tokens: c.accepted_tokens + s.accepted_tokens,
            drafts: c.drafts + s.drafts,
            rejections: c.rejections + s.rejections,
            target_calls: c.target_calls + s.target_calls,
            lossy_accepted_tokens: c.lossy_accepted_tokens + s.lossy_accepted_tokens,
            protected_positions: c.protected_positions + s.protected_positions,
            draft_steps: c.draft_steps + s.draft_steps,
            draft_ms: c.draft_ms + s.draft_ms,
            verify_ms: c.verify_ms + s.verify_ms,
            decode_ms: c.decode_ms + s.decode_ms,
            ..s.clone()
        }
    }

    /// Relays a draft-node's events until the last one, the client leaves, or the stream ends
    /// early (the draft-node, or the target it drafts for, went away, or nothing came for the
    /// stall timeout).
    async fn relay_draft(&mut self, mut stream: Streaming<TokenEvent>) -> End {
        let stall = self.node.stall_timeout;
        loop {
            let ev = match tokio::time::timeout(stall, stream.message()).await {
                Ok(Ok(Some(ev))) => ev,
                Ok(Ok(None)) => return End::DraftGone,
                Ok(Err(e)) => {
                    tracing::warn!(code = ?e.code(), "the draft stream ended: {}", e.message());
                    return End::DraftGone;
                }
                // A link cut without a reset (a partition) sends nothing: the draft is given up.
                Err(_) => {
                    tracing::warn!(
                        "no event from the draft-node for {stall:?} (--stall-timeout): it is given up"
                    );
                    return End::DraftGone;
                }
            };
            let last = ev.finished;
            self.text.sent(&ev.token_ids, &ev.text);
            if self.send(ev).await.is_err() {
                return End::Cancelled;
            }
            if last {
                return End::Done;
            }
        }
    }

    /// The target decodes the rest alone (no draft, or the draft went away); `replay_only`: only
    /// relays what the session committed past what was relayed (End::CaughtUp once it has).
    async fn decode(&mut self, replay_only: bool) -> End {
        let from_len = self.committed_len();
        let prompt_len = self.prompt_ids.len() as u64;
        let stream = self
            .target
            .decode(trace::outgoing(
                v1::DecodeRequest {
                    session_id: self.target_sid.clone(),
                    from_len,
                    session_token: self.target_token.clone(),
                    replay_only,
                },
                &self.ctx,
            ))
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(e) if target_lost(&e) => return End::Lost(e),
            Err(e) => return End::Failed(e),
        };
        if self.draft_url.is_some() && !replay_only {
            tracing::warn!(
                committed_len = from_len,
                "the draft went away: the target finishes alone"
            );
            self.node.update(&self.sid, |rec| rec.fallback = true);
        }
        // The target sends text only when it decodes from the prompt.
        let fallback = from_len > prompt_len;
        // The statistics of what was drafted before stay counted.
        self.carried = self.merged();
        self.stats = v1::Stats::default();
        loop {
            let mut ev = match stream.message().await {
                Ok(Some(ev)) => ev,
                Ok(None) if replay_only => return End::CaughtUp,
                Ok(None) => return End::Done,
                Err(e) if target_lost(&e) => return End::Lost(e),
                Err(e) => return End::Failed(e),
            };
            let last = ev.finished;
            if fallback {
                ev.text = match self.text.push(&ev.token_ids, last).await {
                    Ok(t) => t,
                    Err(e) if target_lost(&e) => {
                        // The tokens were committed: they are sent without text, which the
                        // next target's relay reconstructs.
                        return End::Lost(e);
                    }
                    Err(e) => return End::Failed(e),
                };
            } else {
                self.text.sent(&ev.token_ids, &ev.text);
            }
            ev.fallback = self.draft_url.is_some() && !replay_only;
            if self.send(ev).await.is_err() {
                return End::Cancelled;
            }
            if last {
                return End::Done;
            }
        }
    }

    /// Re-opens the session on another target from its committed tokens and spent budget, and
    /// re-attaches a draft-node; returns the new draft stream (None: the target decodes alone).
    async fn fail_over(&mut self, why: &Status) -> Result<Option<Streaming<TokenEvent>>, Status> {
        let lost = self.target_url.clone();
        tracing::warn!(target_url = %lost, code = ?why.code(), "target lost: {}", why.message());
        self.node.peers.forget(&lost);
        self.lost.push(lost.clone());
        let others: Vec<String> = (self.node.targets.list().iter())
            .filter(|u| !self.lost.contains(u))
            .cloned()
            .collect();
        let url = self.node.pick_target(&others).ok_or_else(|| {
            Status::unavailable(format!(
                "target {lost} was lost mid-request ({}) and no other target-node is configured",
                why.message()
            ))
        })?;
        let mut target = self.node.peers.target(&url).await?;
        let r = &self.req;
        let opened = target
            .open_session(trace::unary(
                v1::OpenSessionRequest {
                    prompt_ids: self.prompt_ids.clone(),
                    max_tokens: self.max_tokens,
                    sampling: r.sampling,
                    policy: r.policy.clone(),
                    stop: r.stop.clone(),
                    top_logprobs: r.top_logprobs,
                    resume_completion: self.text.ids.clone(),
                    resume_budget_spent: self.spent,
                    ..Default::default()
                },
                &self.ctx,
                trace::OPEN_CALL,
            ))
            .await?
            .into_inner();
        tracing::info!(
            target_url = %url,
            target_session_id = %opened.session_id,
            completion_tokens = self.text.ids.len(),
            budget_spent = self.spent,
            "session moved to another target"
        );
        self.target = target.clone();
        self.text.client = target;
        self.target_url = url.clone();
        self.target_sid = opened.session_id.clone();
        self.target_token = opened.session_token.clone();
        self.node
            .tokens
            .lock()
            .unwrap()
            .insert(self.sid.clone(), opened.session_token.clone());
        self.carried = self.merged();
        self.stats = v1::Stats::default();
        let target_sid = self.target_sid.clone();
        self.node.update(&self.sid, |rec| {
            rec.target_url = url.clone();
            rec.target_session_id = target_sid;
            rec.failovers += 1;
        });
        let Some(draft_url) = self.draft_url.clone() else {
            return Ok(None);
        };
        let started = self.start_draft(&draft_url).await;
        match started {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                tracing::warn!(draft_url = %draft_url, "no draft after the move, the target decodes alone: {}", e.message());
                Ok(None)
            }
        }
    }

    /// After the draft's stream ended early, another draft-node that answers (none this request
    /// lost) drafts on. First a replay-only Decode takes the session back from the lost draft's
    /// Verify stream, should it still be open (it can commit nothing more), and relays what it
    /// committed that the relay never saw. Ok(None): no other draft-node, the target decodes
    /// alone; Err: how the request ended meanwhile (e.g. the target was lost too).
    async fn reattach(&mut self) -> Result<Option<Streaming<TokenEvent>>, End> {
        let Some(lost) = self.draft_url.clone() else {
            return Ok(None);
        };
        if self.lost_drafts.len() as u32 >= MAX_FAILOVERS {
            return Ok(None);
        }
        let others: Vec<String> = (self.node.drafts.iter())
            .filter(|u| **u != lost && !self.lost_drafts.contains(u))
            .cloned()
            .collect();
        let Some(url) = self.node.pick_draft(&others) else {
            return Ok(None);
        };
        match self.decode(true).await {
            End::CaughtUp => {}
            end => return Err(end),
        }
        self.node.peers.forget(&lost);
        self.lost_drafts.push(lost.clone());
        self.carried = self.merged();
        self.stats = v1::Stats::default();
        match self.start_draft(&url).await {
            Ok(s) => {
                tracing::warn!(lost = %lost, draft_url = %url, committed_len = self.committed_len(), "draft-node lost: another drafts on");
                self.draft_url = Some(url.clone());
                self.node.update(&self.sid, |rec| {
                    rec.draft_url = url;
                    rec.draft_failovers += 1;
                });
                Ok(Some(s))
            }
            Err(e) => {
                tracing::warn!(draft_url = %url, "draft-node lost and no other could start, the target decodes alone: {}", e.message());
                Ok(None)
            }
        }
    }

    /// Starts the draft-node at `url` on the session's current target, from what is committed.
    pub(crate) async fn start_draft(&self, url: &str) -> Result<Streaming<TokenEvent>, Status> {
        let r = &self.req;
        let mut prompt = self.prompt_ids.clone();
        prompt.extend_from_slice(&self.text.ids);
        let run = v1::RunRequest {
            target_url: self.target_url.clone(),
            session_id: self.target_sid.clone(),
            prompt_ids: prompt,
            gamma: r.gamma,
            gamma_policy: r.gamma_policy.clone(),
            gamma_max: r.gamma_max,
            max_tokens: self.max_tokens.saturating_sub(self.text.ids.len() as u32),
            sampling: r.sampling,
            draft_sampling: r.draft_sampling.clone(),
            pipeline: !r.no_pipeline,
            drafter: r.drafter.clone(),
            tenant: r.tenant.clone(),
            session_token: self.target_token.clone(),
            target_server_name: (self.node.peers.server_name(&self.target_url)).unwrap_or_default(),
        };
        let mut d = self.node.peers.drafter(url).await?;
        Ok(d.run(trace::outgoing(run, &self.ctx)).await?.into_inner())
    }
}
