"""A tiny HTTP app for the Gantry demo: answers on $PORT with $GREETING."""
import http.server
import json
import os


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            body = b"ok\n"
            content_type = "text/plain"
        else:
            body = (json.dumps({
                "greeting": os.environ.get("GREETING", "hello"),
                "environment": os.environ.get("GANTRY_ENVIRONMENT", "?"),
                "path": self.path,
            }) + "\n").encode()
            content_type = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("%s %s" % (self.address_string(), fmt % args), flush=True)


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("listening on 127.0.0.1:%d" % port, flush=True)
    server.serve_forever()
