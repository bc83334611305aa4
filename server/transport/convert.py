"""The core's plain replies as protobuf messages (requests go to the core as they are: it reads their fields)."""

from __future__ import annotations

from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.server.core.messages import Assignment, Beat, DownloadHeader, JoinResult


def join_reply(result: JoinResult) -> pb.JoinReply:
    return pb.JoinReply(session_id=result.session_id, protocol_version=result.protocol_version,
                        upload_codec=result.upload_codec, heartbeat_seconds=result.heartbeat_seconds,
                        run_id=result.run_id, chunk_bytes=result.chunk_bytes,
                        upload_admission=result.upload_admission)


def task(assignment: Assignment) -> pb.Task:
    message = pb.Task(kind=int(assignment.kind), round=assignment.round, version=assignment.version,
                      retry_after_ms=assignment.retry_after_ms, message=assignment.message,
                      phase=assignment.phase, payload=assignment.payload)
    if assignment.config is not None:
        c = assignment.config
        message.config.CopyFrom(pb.TrainConfig(local_epochs=c.local_epochs, batch_size=c.batch_size,
                                               learning_rate=c.learning_rate, proximal_mu=c.proximal_mu,
                                               clip_norm=c.clip_norm, noise_multiplier=c.noise_multiplier,
                                               options=c.options))
    return message


def beat(result: Beat) -> pb.HeartbeatReply:
    return pb.HeartbeatReply(version=result.version, round=result.round, finished=result.finished,
                             finish_message=result.finish_message)


def model_header(header: DownloadHeader) -> pb.ModelHeader:
    return pb.ModelHeader(version=header.version, manifest=header.manifest, incremental=header.incremental,
                          base_version=header.base_version, masked=header.masked)
