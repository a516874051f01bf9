//! A receiver of weir's generic webhook notifications (JSON documents POSTed to `/hook`),
//! written from weir's documented payload: it stores every document, and can hang (never
//! answer) to play a notifier that does not respond.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;

use super::server::{FaultyServer, Shared, Store};

#[derive(Default)]
pub struct Inner {
    /// Every document received, in order.
    pub received: Vec<serde_json::Value>,
}

impl Store for Inner {}

pub type WebhookReceiver = FaultyServer<(), Inner>;

async fn hook(State(s): State<Arc<Shared<(), Inner>>>, body: Bytes) -> StatusCode {
    if let Some(super::server::Fault::Status(code)) = s.next_fault() {
        return StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let delay = s.next_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match serde_json::from_slice(&body) {
        Ok(v) => {
            s.lock().received.push(v);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

/// Starts a webhook receiver; its URL for weir is `{url}/hook`.
pub fn start() -> WebhookReceiver {
    FaultyServer::serve(
        "webhook-receiver",
        (),
        Router::new().route("/hook", post(hook)),
    )
}

impl WebhookReceiver {
    pub fn received(&self) -> Vec<serde_json::Value> {
        self.lock().received.clone()
    }

    /// Never answers (well, after a day).
    pub fn hang(&self) {
        self.set_delay(Duration::from_secs(86_400));
    }
}
