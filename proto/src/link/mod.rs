//! One message enum per link. Each module documents its link's conversation.
//!
//! | link | module | port |
//! |---|---|---|
//! | master -> master (Raft) | [`peer`] | 9419 |
//! | chunkserver -> master | [`cs_master`] | 9420 |
//! | client -> master | [`client_master`] | 9421 |
//! | client -> chunkserver | [`client_cs`] | 9422 |
//! | chunkserver -> chunkserver | [`cs_cs`] | 9422 |

pub mod client_cs;
pub mod client_master;
pub mod cs_cs;
pub mod cs_master;
pub mod peer;

/// Decodes `payload` as each link's message enums (see [`crate::decode_every_message`]).
pub(crate) fn decode_every_message(payload: &[u8]) {
    let _ = crate::decode::<peer::PeerRequest<Vec<u8>, (u64, String), Option<Vec<u64>>>>(payload);
    let _ = crate::decode::<peer::PeerResponse<Vec<u8>, (u64, String), Option<Vec<u64>>>>(payload);
    let _ = crate::decode::<client_master::Request>(payload);
    let _ = crate::decode::<client_master::Reply>(payload);
    let _ = crate::decode::<cs_master::CsToMaster>(payload);
    let _ = crate::decode::<cs_master::MasterToCs>(payload);
    let _ = crate::decode::<client_cs::DataRequest>(payload);
    let _ = crate::decode::<client_cs::DataReply>(payload);
    let _ = crate::decode::<cs_cs::PeerDataRequest>(payload);
    let _ = crate::decode::<cs_cs::PeerDataReply>(payload);
}
