// Swagger UI on the service's own OpenAPI document; validatorUrl null: no call to an online validator.
window.ui = SwaggerUIBundle({
  url: "/api/openapi.json",
  dom_id: "#swagger-ui",
  validatorUrl: null,
  deepLinking: true,
});
