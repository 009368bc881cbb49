//! Reading a request the way the service does: session keys from the body or the query string,
//! fields from a JSON or form body.

use super::store::{Credentials, Invalid};
use axum::async_trait;
use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::Form;
use maxlofs_api::{MediaState, NewMedia, SecretKey};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::convert::Infallible;

/// Everything a call carries besides its path. Never rejected: a malformed body is kept as an
/// error so that the store can answer 403 and 404 before it.
pub struct Payload {
    pub credentials: Credentials,
    pub body: Result<Body, Invalid>,
}

/// The fields of a body. A form carries only strings, so there a number may be written as one.
pub struct Body {
    fields: Map<String, Value>,
    is_form: bool,
}

#[async_trait]
impl<S: Send + Sync> FromRequest<S> for Payload {
    type Rejection = Infallible;

    async fn from_request(request: Request, state: &S) -> Result<Self, Infallible> {
        let query = Query::<HashMap<String, String>>::try_from_uri(request.uri())
            .map(|Query(query)| query)
            .unwrap_or_default();
        let is_form = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
        let body = if is_form {
            Form::<HashMap<String, String>>::from_request(request, state)
                .await
                .map(|Form(form)| Body {
                    fields: form
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect(),
                    is_form: true,
                })
                .map_err(|_| Invalid::new("body", "must be a valid form"))
        } else {
            match Bytes::from_request(request, state).await {
                Ok(bytes) => json_body(&bytes),
                Err(_) => Err(Invalid::new("body", "could not be read")),
            }
        };
        // A key in the body wins over one in the query string.
        let key = |name: &str| {
            body.as_ref()
                .ok()
                .and_then(|body| body.fields.get(name))
                .and_then(Value::as_str)
                .or_else(|| query.get(name).map(String::as_str))
                .map(SecretKey::new)
        };
        let credentials = Credentials {
            device_key: key("device_session_key"),
            user_key: key("user_session_key"),
        };
        Ok(Payload { credentials, body })
    }
}

/// Any content type that is not a form is read as JSON; an empty body has no fields.
fn json_body(bytes: &[u8]) -> Result<Body, Invalid> {
    let fields = if bytes.is_empty() {
        Map::new()
    } else {
        match serde_json::from_slice(bytes) {
            Ok(Value::Object(fields)) => fields,
            _ => return Err(Invalid::new("body", "must be a JSON object")),
        }
    };
    Ok(Body {
        fields,
        is_form: false,
    })
}

impl Body {
    /// The fields of a create, checked in the order the API page lists them.
    pub fn new_media(&self) -> Result<NewMedia, Invalid> {
        Ok(NewMedia {
            media_path: self.string("media_path")?,
            state: self.media_state()?,
        })
    }

    /// The fields of an update.
    pub fn media_state(&self) -> Result<MediaState, Invalid> {
        Ok(MediaState {
            file_hash: self.string("file_hash")?,
            file_size: self.size("file_size")?,
            ctime: self.string("ctime")?,
            mtime: self.string("mtime")?,
        })
    }

    /// The body as one of the typed content requests (`api::content`); serde's message names
    /// the field that is missing or mistyped.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Invalid> {
        serde_json::from_value(Value::Object(self.fields.clone()))
            .map_err(|err| Invalid::new("body", err.to_string()))
    }

    pub fn string(&self, field: &'static str) -> Result<String, Invalid> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Err(Invalid::new(field, "is missing")),
            Some(Value::String(text)) => Ok(text.clone()),
            Some(_) => Err(Invalid::new(field, "must be a string")),
        }
    }

    fn size(&self, field: &'static str) -> Result<u64, Invalid> {
        let size = match self.fields.get(field) {
            None | Some(Value::Null) => return Err(Invalid::new(field, "is missing")),
            Some(Value::String(text)) if self.is_form => text.parse().ok(),
            Some(value) => value.as_u64(),
        };
        size.ok_or_else(|| Invalid::new(field, "must be a non-negative integer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json(value: Value) -> Body {
        json_body(value.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn json_fields_must_have_their_types() {
        let hash = "a".repeat(64);
        let body = json(json!({"media_path": "a", "file_hash": hash, "file_size": 3,
            "ctime": "t", "mtime": "t"}));
        assert_eq!(body.new_media().unwrap().state.file_size, 3);
        for (size, reason) in [
            (json!(-1), "must be a non-negative integer"),
            (json!(1.5), "must be a non-negative integer"),
            (json!("3"), "must be a non-negative integer"),
            (json!(null), "is missing"),
        ] {
            let body = json(json!({"file_hash": hash, "file_size": size}));
            assert_eq!(
                body.media_state(),
                Err(Invalid::new("file_size", reason)),
                "{size}"
            );
        }
        assert_eq!(
            json(json!({"media_path": 7})).new_media(),
            Err(Invalid::new("media_path", "must be a string"))
        );
        assert_eq!(
            json(json!({})).media_state(),
            Err(Invalid::new("file_hash", "is missing"))
        );
    }

    #[test]
    fn form_numbers_are_strings() {
        let form = |size: &str| Body {
            fields: [("file_size".to_string(), Value::String(size.into()))]
                .into_iter()
                .collect(),
            is_form: true,
        };
        assert_eq!(form("12").size("file_size"), Ok(12));
        assert!(form("-12").size("file_size").is_err());
    }

    #[test]
    fn a_body_must_be_a_json_object() {
        assert!(json_body(b"").is_ok());
        for bad in [&b"[1]"[..], b"{", b"\"text\""] {
            assert_eq!(
                json_body(bad).err(),
                Some(Invalid::new("body", "must be a JSON object"))
            );
        }
    }
}
