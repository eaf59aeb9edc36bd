//! `GET /api/v1/pulse?minutes=N` and `/api/v1/pulse/{slug}?minutes=N` (admin rule): readers
//! minute by minute, the most at once in each minute, oldest first, the minute under way
//! last; minutes without readers included as 0. Held in memory by
//! [`crate::posts::pulse`]; the admin stream sends each of the site's minutes as it closes.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::edge::slug::Slug;
use crate::http::admin::authorize_admin_read;
use crate::http::params::{number_param, query};
use crate::http::state::AppState;
use crate::posts::pulse::{MinuteJson, PULSE_MINUTES};
use crate::refusal::Refusal;

const DEFAULT_MINUTES: u32 = 60;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/pulse", web::get().to(site))
        .route("/pulse/{slug:.*}", web::get().to(post));
}

#[derive(serde::Serialize)]
struct PulseJson {
    minutes: Vec<MinuteJson>,
}

fn minutes(req: &HttpRequest) -> Result<u32, Refusal> {
    number_param(&query(req), "minutes", 1..=PULSE_MINUTES, DEFAULT_MINUTES)
}

fn answer(state: &AppState, minutes: Vec<(u64, u64)>) -> HttpResponse {
    let minutes = minutes
        .into_iter()
        .map(|(minute, live)| MinuteJson::new(&state.calendar, minute, live))
        .collect();
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(PulseJson { minutes })
}

async fn site(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Refusal> {
    authorize_admin_read(&req, &state)?;
    let n = minutes(&req)?;
    Ok(answer(&state, state.registry.pulse().site(n)))
}

async fn post(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Refusal> {
    authorize_admin_read(&req, &state)?;
    let slug = Slug::parse(req.match_info().get("slug").unwrap_or_default())?;
    if !state.is_listed(&slug) {
        return Err(Refusal::UnknownPost);
    }
    let n = minutes(&req)?;
    Ok(answer(&state, state.registry.pulse().post(&slug, n)))
}
