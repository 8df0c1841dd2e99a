//! One accepted connection: attributed through the kernel's record, planned
//! ([`super::decide`]) from its first message, recorded once (audit event
//! and connection log, whatever the outcome), then carried out: TLS
//! terminated and HTTP served, bytes relayed, or the connection closed.

use std::{net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use agentguard_common::{ConnRecord, PeerKey};

use tokio::net::TcpStream;
use tracing::{Instrument as _, info, info_span, warn};

use super::{
    ProxyContext,
    decide::{self, ConnPlan},
    http::{self, ConnMeta},
    limits::Held,
    refusal::ConnRefusal,
    relay,
    sniff::sniff,
    tcp_state::AgentSocket,
};
use crate::{
    audit::{self, Event, Kind},
    connlog,
    ebpf::{peer_addr, peer_key},
    identity::{Identity, original_destination},
    live::LiveState,
    netns::{Dial, Origin},
    policy::UpstreamNetns,
};

/// How long a new connection may take to send its first message
/// (ClientHello or request line), and to finish a TLS handshake.
/// Server-speaks-first protocols never do, and are refused after this.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

/// Attributes one connection, decides what to do with it, and does it.
/// Nothing is relayed without a kernel record: a connection we cannot
/// attribute is one we cannot decide on. `origin`: the listener's network
/// namespace (the agent's), where the record is looked up.
pub async fn handle(stream: TcpStream, peer: SocketAddr, origin: &Origin, ctx: Arc<ProxyContext>) {
    // Responses go out in pieces (headers, then body frames, TLS records
    // each); with Nagle's algorithm a piece waits for the agent's delayed
    // ACK, ~40 ms (measured: p99 at 1000 req/s and the first SSE event).
    let _ = stream.set_nodelay(true);
    let state = ctx.live.load();
    let (identity, dst) = match attribute(peer, origin.netns, &ctx, &state) {
        Attribution::Agent(identity, dst) => (identity, dst),
        Attribution::Refused {
            identity,
            dst,
            refusal,
        } => {
            untrack(&ctx, origin, peer);
            drop(stream);
            let plan = ConnPlan::Refuse(refusal);
            ConnOutcome::new(peer, identity.as_ref(), dst, &plan)
                .record(&ctx, &state.policy.version)
                .await;
            return;
        }
    };
    // Before a byte is read: an agent at its cap (or a proxy at its
    // descriptor budget) gets the connection closed, and the record says
    // why. The place is held until the connection ends.
    let held = match ctx.limits.connection(&identity.agent, &state.policy) {
        Ok(held) => held,
        Err(refusal) => {
            untrack(&ctx, origin, peer);
            drop(stream);
            let plan = ConnPlan::Refuse(refusal);
            ConnOutcome::new(peer, Some(&identity), Some(dst), &plan)
                .record(&ctx, &state.policy.version)
                .await;
            return;
        }
    };
    // Whom the process acts for, as soon after its connect as the proxy
    // can ask (the sniff and the handshake, up to 10 s each, would give it
    // time to exit, or its pid to be reused): every request of the
    // connection is that person's.
    let on_behalf_of = ctx.on_behalf_of.lookup(identity.pid);
    // From the agent's own namespace unless its policy says the host's.
    let dial = match state
        .policy
        .agent(&identity.agent)
        .map(|a| a.upstream_netns)
    {
        Some(UpstreamNetns::Host) => Dial::Host,
        _ => origin.dial.clone(),
    };
    let span = info_span!(
        "conn",
        agent = %identity.agent,
        pid = identity.pid,
        uid = identity.uid,
        comm = %identity.comm,
        cgroup = %identity.cgroup,
        dst = %dst,
    );
    async move {
        let plan = match sniff(&stream, SNIFF_TIMEOUT).await {
            Ok(sniffed) => decide::decide(
                &sniffed,
                &state.policy,
                &*ctx.resolvers,
                &identity.agent,
                dst,
            ),
            Err(e) => ConnPlan::Refuse(ConnRefusal::Sniff(e)),
        };
        // Revoking the agent ends the connection (and closes its sockets)
        // wherever it is: handshake, requests, a stream, a relay.
        let agent = identity.agent.clone();
        let revocations = ctx.revocations.clone();
        if let ConnPlan::Passthrough { .. } = plan {
            // Dialled (and spliced, where opted in and the kernel allows)
            // before the record, so that it says which way the bytes go,
            // or that the upstream was not reached: a passthrough
            // connection has no request events to say so later. The bytes
            // waiting on the agent's socket move only once it is written.
            let agent_socket = peer_key(origin.netns, peer);
            let prepared =
                relay::prepare(stream, dst, &dial, ctx.splice.as_ref(), agent_socket).await;
            let mut outcome = ConnOutcome::new(peer, Some(&identity), Some(dst), &plan);
            match &prepared {
                Ok(relay) => outcome.relay = Some(relay.path()),
                Err(e) => {
                    untrack(&ctx, origin, peer);
                    outcome.failure = Some(e);
                }
            }
            outcome.record(&ctx, &state.policy.version).await;
            drop(state);
            if let Ok(prepared) = prepared
                && revocations
                    .until_revoked(
                        &agent,
                        pin!(prepared.run(&ctx.metrics, ctx.limits.options().passthrough_idle)),
                    )
                    .await
                    .is_none()
            {
                info!("connection closed: the agent was revoked");
            }
            drop(held);
            return;
        }
        // Handled here: the agent's sends need not pass the kernel relay's
        // message program.
        untrack(&ctx, origin, peer);
        ConnOutcome::new(peer, Some(&identity), Some(dst), &plan)
            .record(&ctx, &state.policy.version)
            .await;
        drop(state);
        let done = revocations
            .until_revoked(
                &agent,
                pin!(carry_out(
                    plan,
                    stream,
                    (identity, on_behalf_of),
                    peer,
                    dst,
                    dial,
                    ctx,
                    Arc::new(held)
                )),
            )
            .await;
        if done.is_none() {
            info!("connection closed: the agent was revoked");
        }
    }
    .instrument(span)
    .await;
}

/// Takes the agent's socket out of the kernel relay's maps (with
/// `--passthrough-relay kernel`): its connection will not be relayed that
/// way, and its sends need not pass the message program.
fn untrack(ctx: &ProxyContext, origin: &Origin, peer: SocketAddr) {
    if let Some(splicer) = &ctx.splice {
        splicer.untrack(&peer_key(origin.netns, peer));
    }
}

/// Who is behind a connection, from the kernel's record, before a byte of
/// it is read.
enum Attribution {
    /// The agent, and the destination it dialled.
    Agent(Identity, SocketAddr),
    /// Refused, with what was known of it.
    Refused {
        identity: Option<Identity>,
        dst: Option<SocketAddr>,
        refusal: ConnRefusal,
    },
}

fn attribute(peer: SocketAddr, netns: u64, ctx: &ProxyContext, state: &LiveState) -> Attribution {
    let Some(record) = ctx.peers.take(netns, peer) else {
        return Attribution::Refused {
            identity: None,
            dst: None,
            refusal: ConnRefusal::NoKernelRecord,
        };
    };
    let dst = original_destination(&record);
    let identity = match state.agents.resolve(&record) {
        Ok(identity) => identity,
        Err(e) => {
            return Attribution::Refused {
                identity: None,
                dst: Some(dst),
                refusal: ConnRefusal::UnknownCgroup(e),
            };
        }
    };
    if let Some(revoked) = ctx.revocations.revoked(&identity.agent) {
        return Attribution::Refused {
            refusal: ConnRefusal::Revoked {
                agent: identity.agent.to_string(),
                reason: revoked.reason,
            },
            identity: Some(identity),
            dst: Some(dst),
        };
    }
    match decide::check_destination(dst, ctx.proxy_port) {
        Ok(()) => Attribution::Agent(identity, dst),
        Err(refusal) => Attribution::Refused {
            identity: Some(identity),
            dst: Some(dst),
            refusal,
        },
    }
}

/// Records a connection whose kernel record was forgotten unaccepted
/// after `max_wait` (`crate::daemon`'s record expiry), from the record
/// (`key`: where the agent's socket was): refused, as it is should the
/// proxy still accept it.
pub async fn record_forgotten(
    ctx: &ProxyContext,
    key: &PeerKey,
    record: &ConnRecord,
    max_wait: Duration,
) {
    let state = ctx.live.load();
    let identity = state.agents.resolve(record).ok();
    let plan = ConnPlan::Refuse(ConnRefusal::RecordExpired { max_wait });
    ConnOutcome::new(
        peer_addr(key),
        identity.as_ref(),
        Some(original_destination(record)),
        &plan,
    )
    .record(ctx, &state.policy.version)
    .await;
}

/// Records a connection on passthrough's direct way from the kernel's
/// report (`super::direct`): `peer` the agent's socket, `relay` `Some`
/// when it opened.
pub async fn record_direct(
    ctx: &ProxyContext,
    peer: SocketAddr,
    identity: Option<&Identity>,
    dst: SocketAddr,
    plan: &ConnPlan,
    relay: Option<relay::Path>,
    policy_version: &Arc<str>,
) {
    let mut outcome = ConnOutcome::new(peer, identity, Some(dst), plan);
    outcome.relay = relay;
    outcome.record(ctx, policy_version).await;
}

#[allow(clippy::too_many_arguments)]
async fn carry_out(
    plan: ConnPlan,
    stream: TcpStream,
    (identity, on_behalf_of): (Identity, Option<String>),
    peer: SocketAddr,
    dst: SocketAddr,
    dial: Dial,
    ctx: Arc<ProxyContext>,
    held: Arc<Held>,
) {
    match plan {
        ConnPlan::InterceptTls { sni } => {
            // Bounded: a client that stalls mid-handshake must not hold a
            // task and a socket for ever.
            let tls = match tokio::time::timeout(SNIFF_TIMEOUT, ctx.tls.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    warn!(error = %e, "agent TLS handshake failed");
                    return;
                }
                Err(_) => {
                    warn!("agent TLS handshake timed out");
                    return;
                }
            };
            let agent_socket = Some(AgentSocket::of(tls.get_ref().0));
            let meta = ConnMeta {
                identity,
                peer,
                dst,
                sni: Some(sni),
                dial,
                place: held,
                agent_socket,
                on_behalf_of,
            };
            // Boxed: `serve` keeps its argument in its state beside the
            // connection it moves it into, and the TLS stream is 1.2 KiB
            // (`-Zprint-type-sizes`): two copies of it in every open
            // connection's task, against one behind a pointer.
            http::serve(Box::new(tls), meta, ctx).await;
        }
        ConnPlan::InterceptHttp => {
            let meta = ConnMeta {
                identity,
                peer,
                dst,
                sni: None,
                dial,
                place: held,
                agent_socket: Some(AgentSocket::of(&stream)),
                on_behalf_of,
            };
            http::serve(stream, meta, ctx).await;
        }
        // Carried out by `handle` (its record waits for the relay's path).
        ConnPlan::Passthrough { .. } => drop((stream, held)),
        // Dropping the stream closes it, with nothing sent upstream.
        ConnPlan::Refuse(_) => drop(held),
    }
}

/// What became of one connection, as the audit record and the connection
/// log keep it. Every connection makes exactly one.
struct ConnOutcome<'a> {
    peer: SocketAddr,
    /// `None` when the kernel had no record, or it named no agent.
    identity: Option<&'a Identity>,
    dst: Option<SocketAddr>,
    plan: &'a ConnPlan,
    /// For a passthrough connection whose upstream was reached: which way
    /// its bytes go.
    relay: Option<relay::Path>,
    /// For a passthrough connection whose upstream was not reached: why
    /// (added to the reason; the decision stays the policy's).
    failure: Option<&'a relay::RelayError>,
}

impl<'a> ConnOutcome<'a> {
    fn new(
        peer: SocketAddr,
        identity: Option<&'a Identity>,
        dst: Option<SocketAddr>,
        plan: &'a ConnPlan,
    ) -> Self {
        Self {
            peer,
            identity,
            dst,
            plan,
            relay: None,
            failure: None,
        }
    }

    /// The audit event, built from this outcome alone.
    fn event(&self, reason: &str, policy_version: &Arc<str>) -> Event {
        let decision = match self.plan.decision() {
            connlog::Decision::Intercept => audit::Decision::Intercept,
            connlog::Decision::Passthrough => audit::Decision::Passthrough,
            connlog::Decision::Refuse => audit::Decision::Refuse,
        };
        let mut event = Event::new(Kind::Connection)
            .with_src(self.peer)
            .with_decision(decision, reason);
        if let Some(identity) = self.identity {
            event = identity.stamp(event);
        }
        if let Some(dst) = self.dst {
            event = event.with_dst(dst);
        }
        let sni = match self.plan {
            ConnPlan::InterceptTls { sni } | ConnPlan::Passthrough { sni, .. } => Some(sni),
            ConnPlan::InterceptHttp | ConnPlan::Refuse(_) => None,
        };
        if !matches!(self.plan, ConnPlan::Refuse(_)) {
            event.protocol = Some(if sni.is_some() { "tls" } else { "http" }.to_owned());
        }
        event.sni = sni.map(|s| s.as_str().into());
        event.relay = self.relay.map(|p| p.as_str().to_owned());
        event.rule = Some(self.plan.rule().into());
        event.policy_version = Some(policy_version.clone());
        event
    }

    /// Logs the decision, writes its audit event and its connection-log
    /// entry.
    async fn record(self, ctx: &ProxyContext, policy_version: &Arc<str>) {
        let mut reason = self.plan.reason();
        if let Some(e) = self.failure {
            warn!(error = %e, "passthrough connection closed: upstream not reached");
            reason = format!("{reason}; upstream not reached: {e}");
        }
        let decision = self.plan.decision();
        match decision {
            connlog::Decision::Refuse => warn!(
                peer = %self.peer,
                agent = self.identity.map(|i| &*i.agent),
                dst = ?self.dst,
                reason,
                "connection refused"
            ),
            _ => info!(decision = ?decision, reason, "connection decided"),
        }
        ctx.audit.record(self.event(&reason, policy_version)).await;
        ctx.log.push(
            self.peer,
            self.identity.cloned(),
            self.dst,
            decision,
            reason,
            policy_version,
        );
    }
}
