import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import StateStore

/// The data plane's two endpoints: `GET /v1/dataplane/plans?after=N` (the signed plans after N)
/// and `POST /v1/dataplane/reports` (the agent's reports and health). The agent proves itself
/// with the data-plane token (`gantry run --data-plane-token-file`), not an agent's API token:
/// plans are orders to the machines that run workloads, and no principal's token reaches them.
extension APIServer {
    func dataPlaneRoutes(_ router: Router<BasicRequestContext>) {
        let service = self.service
        router.get("/v1/dataplane/plans") { request, _ -> Response in
            if let refused = Self.dataPlaneRefusal(request, service: service) { return refused }
            let after = request.uri.queryParameters.get("after").flatMap { Int($0) } ?? 0
            let plans = await Self.offLoop { Result { try service.store.plans(after: after) } }
            switch plans {
            case .success(let plans):
                var body = Data(#"{"plans":["#.utf8)
                for (index, plan) in plans.enumerated() {
                    // (At most 64 MiB a page, at least one plan: the agent asks again after the last.)
                    if index > 0, body.count + plan.envelope.count > 64 << 20 { break }
                    if index > 0 { body.append(UInt8(ascii: ",")) }
                    body.append(plan.envelope)
                }
                body.append(contentsOf: Array("]}\n".utf8))
                service.metrics.request(route: "GET /v1/dataplane/plans", status: 200)
                return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(data: body)))
            case .failure(let error):
                return self.refusal(error, route: "GET /v1/dataplane/plans")
            }
        }
        router.post("/v1/dataplane/reports") { request, _ -> Response in
            if let refused = Self.dataPlaneRefusal(request, service: service) { return refused }
            do {
                let data = try await Self.readBody(request)
                let stored = await Self.offLoop { Result { try Self.storeReports(data, store: service.store) } }
                let count = try stored.get()
                service.metrics.request(route: "POST /v1/dataplane/reports", status: 200)
                return Self.json(200, .map([("received", .int(count))]))
            } catch {
                return self.refusal(error, route: "POST /v1/dataplane/reports")
            }
        }
    }

    /// Nil when the request carries the data-plane token; else the refusal (404 when none is configured).
    static func dataPlaneRefusal(_ request: Request, service: AgentService) -> Response? {
        guard let expected = service.configuration.dataPlaneToken else {
            return json(404, APIError(404, "no-data-plane", "this control plane has no data plane",
                                      fix: "start gantry run with --data-plane-token-file FILE").body)
        }
        let given = request.headers[.authorization].flatMap { $0.hasPrefix("Bearer ") ? String($0.dropFirst(7)) : nil } ?? ""
        // (Compared as digests: the time taken says nothing of how much matched.)
        guard SHA256.hash(data: Data(given.utf8)) == SHA256.hash(data: Data(expected.utf8)) else {
            service.metrics.request(route: "/v1/dataplane", status: 401)
            return json(401, APIError(401, "unauthenticated", "the data-plane token is missing or wrong",
                                      fix: "give gantry agent the token of --data-plane-token-file (--token-file)").body)
        }
        return nil
    }

    /// Keeps each report (by its plan's sequence) and the health; returns how many reports came.
    static func storeReports(_ data: Data, store: StateStore) throws -> Int {
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw APIError.badRequest("the body is not a JSON object", fix: #"send {"reports": [...], "health": {...}}"#)
        }
        let reports = object["reports"] as? [[String: Any]] ?? []
        var kept = 0
        for report in reports {
            guard let sequence = report["sequence"] as? Int, sequence > 0, let ok = report["ok"] as? Bool else { continue }
            // Only a report on a plan this control plane issued (none in advance: it would stand
            // for the plan once issued), under that plan's environment.
            guard let plan = try store.plans(after: sequence - 1, limit: 1).first, plan.sequence == sequence else { continue }
            var report = report
            report["environment"] = plan.environment
            let body = try JSONSerialization.data(withJSONObject: report, options: [.sortedKeys])
            try store.addReport(sequence: sequence, environment: plan.environment, ok: ok, body: String(decoding: body, as: UTF8.self))
            kept += 1
        }
        if let health = object["health"] as? [String: Any] {
            let body = try JSONSerialization.data(withJSONObject: health, options: [.sortedKeys])
            try store.setDataPlaneHealth(String(decoding: body, as: UTF8.self))
        }
        return kept
    }
}
