import Foundation
import HTTPTypes
import Hummingbird
import MCP
import NIOCore

/// `/mcp` on the API port: MCP's streamable HTTP transport in its stateless form, a server and a
/// transport per request (a shared one refuses a second client's `initialize`). The bearer token
/// is checked before MCP sees the request; the Host and Origin headers are checked by the SDK
/// (Hummingbird keeps HTTP/1.1's Host in `head.authority`: it is copied back for that check).
enum MCPEndpoint {
    static func install(on router: Router<BasicRequestContext>, service: AgentService, server: APIServer) {
        for method in [HTTPTypes.HTTPRequest.Method.post, .get, .delete] {
            router.on("/mcp", method: method) { request, _ -> Hummingbird.Response in
                let authenticated = await server.admit(request)
                if case .failure(let error) = authenticated { return server.refusal(error, route: "/mcp") }
                // (The in-flight place is held by each tool call itself.)
                if case .success(let caller) = authenticated { service.inFlight.leave(caller.tokenID) }
                // Without a Host the SDK's DNS-rebinding check has nothing to check: refused.
                guard request.head.authority != nil else {
                    service.metrics.request(route: "/mcp", status: 400)
                    return APIServer.json(400, APIError.badRequest("the request has no Host header", fix: "send Host: 127.0.0.1:PORT (HTTP/1.1 requires it)").body)
                }
                let body: Data
                do { body = try await APIServer.readBody(request) } catch { return server.refusal(error, route: "/mcp") }
                var headers: [String: String] = [:]
                for field in request.headers {
                    let key = field.name.canonicalName
                    headers[key] = headers[key].map { "\($0), \(field.value)" } ?? field.value
                }
                if let authority = request.head.authority { headers["host"] = authority }
                let transport = StatelessHTTPServerTransport(validationPipeline: StandardValidationPipeline(validators: [
                    OriginValidator.localhost(port: server.port), AcceptHeaderValidator(mode: .jsonOnly), ContentTypeValidator(), ProtocolVersionValidator(),
                ]))
                let caller = try? authenticated.get()
                let mcp = await MCPTools.makeServer(service: service) {
                    guard let caller else { throw APIError(401, "unauthorized", "no caller", fix: "send a bearer token") }
                    return caller
                }
                let answer: MCP.HTTPResponse
                do {
                    try await mcp.start(transport: transport)
                    answer = await transport.handleRequest(MCP.HTTPRequest(method: request.method.rawValue, headers: headers,
                                                                          body: body.isEmpty ? nil : body,
                                                                          path: request.uri.path))
                    await mcp.stop()
                } catch {
                    return APIServer.json(500, APIError(500, "internal", "the MCP server could not start: \(error)", fix: "try again").body)
                }
                service.metrics.request(route: "/mcp", status: answer.statusCode)
                var fields = HTTPFields()
                for (name, value) in answer.headers { if let name = HTTPField.Name(name) { fields[name] = value } }
                if case .stream(let stream, _) = answer {
                    return Hummingbird.Response(status: .init(code: answer.statusCode), headers: fields, body: ResponseBody { writer in
                        for try await chunk in stream { try await writer.write(ByteBuffer(bytes: chunk)) }
                        try await writer.finish(nil)
                    })
                }
                return Hummingbird.Response(status: .init(code: answer.statusCode), headers: fields,
                                            body: answer.bodyData.map { ResponseBody(byteBuffer: ByteBuffer(bytes: $0)) } ?? ResponseBody())
            }
        }
    }
}
